"""A stand-in for mmcv's compiled ``mmcv._ext`` on the lent GPU machine, where no mmcv build with CUDA ops exists for
its torch (``scripts/device/run.sh`` installs it as ``mmcv/_ext.py`` beside a Python-only mmcv).

The benchmarks there need two compiled ops at inference, NMS (RetinaNet's and the RPN's post-processing) and
RoIAlign in average mode (two-stage detectors' RoI heads on the GPU), which torchvision's CUDA kernels compute the
same way; every other op of ``mmcv.ops`` imports (mmcv checks only that the names exist) and raises, naming itself,
if called. Not part of the package: a user's environment has the real mmcv.
"""
from __future__ import annotations

import torch
import torchvision


def nms(bboxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, offset: int = 0) -> torch.Tensor:
    """Indices of the boxes NMS keeps, by decreasing score: ``mmcv._ext.nms``'s contract. ``offset`` 1 is mmcv's
    legacy pixel convention (widths ``x2 - x1 + 1``), emulated by widening the boxes."""
    if offset:
        bboxes = torch.cat([bboxes[:, :2], bboxes[:, 2:] + offset], dim=1)
    return torchvision.ops.nms(bboxes, scores, float(iou_threshold))


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor, argmax_y: torch.Tensor,
                      argmax_x: torch.Tensor, aligned_height: int, aligned_width: int, spatial_scale: float,
                      sampling_ratio: int, pool_mode: int, aligned: bool) -> None:
    """``mmcv._ext.roi_align_forward``'s contract (writes ``output``) in average mode (``pool_mode`` 1), the one
    mmdet's RoI extractors use; rois are ``(image index, x1, y1, x2, y2)`` rows, as torchvision takes them."""
    if pool_mode != 1:
        raise NotImplementedError('RoIAlign max pooling is not available: scripts/device/mmcv_ext.py averages only')
    output.copy_(torchvision.ops.roi_align(input, rois, (aligned_height, aligned_width), spatial_scale,
                                           sampling_ratio, aligned))


def get_compiler_version() -> str:
    return 'none: mmcv ops stood in for by scripts/device/mmcv_ext.py'


def get_compiling_cuda_version() -> str:
    return 'none: mmcv ops stood in for by scripts/device/mmcv_ext.py'


def __getattr__(name: str):
    if name.startswith('__'):
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise NotImplementedError(f'mmcv op {name!r} is not available: this machine runs mmcv without compiled ops '
                                  '(scripts/device/mmcv_ext.py provides nms and roi_align_forward only)')
    return missing

"""A stand-in for mmcv's compiled ``mmcv._ext`` on the lent GPU machine, where no mmcv build with CUDA ops exists for
its torch (``scripts/device/run.sh`` installs it as ``mmcv/_ext.py`` beside a Python-only mmcv).

The benchmarks there need one compiled op, NMS (RetinaNet's and the RPN's post-processing), which torchvision's
CUDA kernel computes the same way; every other op of ``mmcv.ops`` imports (mmcv checks only that the names exist)
and raises, naming itself, if called. Not part of the package: a user's environment has the real mmcv.
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


def get_compiler_version() -> str:
    return 'none: mmcv ops stood in for by scripts/device/mmcv_ext.py'


def get_compiling_cuda_version() -> str:
    return 'none: mmcv ops stood in for by scripts/device/mmcv_ext.py'


def __getattr__(name: str):
    if name.startswith('__'):
        raise AttributeError(name)

    def missing(*args, **kwargs):
        raise NotImplementedError(f'mmcv op {name!r} is not available: this machine runs mmcv without compiled ops '
                                  '(scripts/device/mmcv_ext.py provides nms only)')
    return missing

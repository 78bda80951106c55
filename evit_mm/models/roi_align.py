"""RoIAlign (average mode) as two small matrix products per RoI, for CPU inference of two-stage detectors.

He et al., "Mask R-CNN", ICCV 2017: each output bin averages bilinear samples on a regular grid inside it. Bilinear
weights are products of a row weight and a column weight, and the grid is the product of its rows and columns, so
a bin's average is ``Ay[ph] F Ax[pw]^T``: ``Ay`` ``(pooled_h, H)`` holds each bin row's averaged row weights and
``Ax`` ``(pooled_w, W)`` its column weights. Per RoI that is one GEMM over the rows of the RoI's window of the map
and a batched one over its columns, on the channels-last map as it is (every channel of a pixel is contiguous).

Why our own: mmcv's CPU RoIAlign runs on one thread, channel plane by channel plane, and reads NCHW memory (its
compiled op needs a contiguous copy of a channels-last map, ``evit_mm.compat.mmcv_contiguous``). Mask R-CNN-EViT-M4
at 800x1333 spent 1.3 s of a 2.1 s prediction in it on 2 AVX2 cores (``docs/benchmarks.md``, "RoIAlign as matrix
products"). Same sampling rules as mmcv's kernel (``aligned`` offset, adaptive ``sampling_ratio=0`` grids, samples
beyond one pixel outside the map dropped, edge clamping); values differ by float rounding only.
"""
from __future__ import annotations

import torch
from mmcv.ops import RoIAlign
from torch import nn

from .eager_kernels import exporting_or_compiling
from .module_swap import replace_modules


def _axis_weights(start: torch.Tensor, length: torch.Tensor, pooled: int, sampling_ratio: int,
                  size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Averaged bilinear weights of every bin along one axis, ``(R, pooled, size)``, and each RoI's support
    ``[first, end)`` on that axis (``(R,)`` each), with mmcv's sampling rules (``roi_align_cuda_kernel.cuh``)."""
    bin_size = length / pooled
    if sampling_ratio > 0:
        grid = torch.full_like(length, sampling_ratio, dtype=torch.long)
    else:
        grid = torch.ceil(length / pooled).long().clamp(min=0)  # empty or inverted boxes: no samples
    most = max(int(grid.max()) if grid.numel() else 0, 1)
    bins = torch.arange(pooled, dtype=start.dtype).view(1, -1, 1)
    samples = torch.arange(most, dtype=start.dtype).view(1, 1, -1)
    grid_f = grid.to(start.dtype).clamp(min=1).view(-1, 1, 1)
    pos = start.view(-1, 1, 1) + bins * bin_size.view(-1, 1, 1) + (samples + 0.5) * bin_size.view(-1, 1, 1) / grid_f
    valid = (samples < grid.view(-1, 1, 1)) & (pos >= -1.0) & (pos <= size)
    pos = pos.clamp(min=0)
    low = pos.long()
    at_edge = low >= size - 1
    low = torch.where(at_edge, size - 1, low)
    high = torch.where(at_edge, size - 1, low + 1)
    frac = torch.where(at_edge, 0.0, pos - low)
    keep = valid.to(start.dtype)
    weights = torch.zeros(start.shape[0], pooled, size, dtype=start.dtype)
    weights.scatter_add_(2, low, (1.0 - frac) * keep)
    weights.scatter_add_(2, high, frac * keep)
    weights /= grid_f
    first = torch.where(valid, low, size).flatten(1).amin(1)
    end = torch.where(valid, high, -1).flatten(1).amax(1) + 1
    return weights, first, end


def roi_align_separable(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                        spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True) -> torch.Tensor:
    """mmcv's average-mode RoIAlign of ``features`` ``(N, C, H, W)`` (any memory layout) at ``rois`` ``(R, 5)``
    (batch index, x1, y1, x2, y2 in image pixels): ``(R, C, *output_size)``, channels-last memory."""
    _, channels, height, width = features.shape
    pooled_h, pooled_w = output_size
    maps = features.permute(0, 2, 3, 1)
    if not maps.is_contiguous():  # an NCHW input: one NHWC copy, so that every window below is a plain matrix
        maps = maps.contiguous()
    boxes = rois[:, 1:].to(features.dtype) * spatial_scale - (0.5 if aligned else 0.0)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if not aligned:  # mmcv keeps this for backward compatibility only
        widths, heights = widths.clamp(min=1.0), heights.clamp(min=1.0)
    rows, row_first, row_end = _axis_weights(boxes[:, 1], heights, pooled_h, sampling_ratio, height)
    cols, col_first, col_end = _axis_weights(boxes[:, 0], widths, pooled_w, sampling_ratio, width)
    out = features.new_zeros(rois.shape[0], pooled_h, pooled_w, channels)
    # Per RoI the loop below issues five tensor ops (host time dominates for small RoIs): views are taken once
    # here, and each window is an as_strided view of the map, (h, w*C) with rows W*C apart, read in place.
    row_stride, base = width * channels, maps.storage_offset()
    image_stride = height * row_stride
    spans = zip(rois[:, 0].long().tolist(), row_first.tolist(), row_end.tolist(), col_first.tolist(),
                col_end.tolist(), rows.unbind(0), cols.unbind(0), out.unbind(0))
    for image, y0, y1, x0, x1, bin_rows, bin_cols, bins in spans:
        if y1 <= y0 or x1 <= x0:
            continue  # no sample inside the map: zeros, as mmcv gives
        h, w = y1 - y0, x1 - x0
        window = maps.as_strided((h, w * channels), (row_stride, 1),
                                 base + image * image_stride + y0 * row_stride + x0 * channels)
        # the rows first: (pooled_h, h) @ (h, w*C); then the columns of each bin row: (pooled_w, w) @ (w, C)
        by_rows = torch.mm(bin_rows.narrow(1, y0, h), window).view(pooled_h, w, channels)
        torch.bmm(bin_cols.narrow(1, x0, w).expand(pooled_h, -1, -1), by_rows, out=bins)
    return out.permute(0, 3, 1, 2)


class SeparableRoIAlign(RoIAlign):
    """mmcv's ``RoIAlign`` that runs :func:`roi_align_separable` for eager CPU float32 inference in average mode,
    and mmcv's op everywhere else (GPU, autograd, max pooling, tracing and export). Same arguments."""

    def fast_path(self, features: torch.Tensor, rois: torch.Tensor) -> bool:
        """Whether :func:`roi_align_separable` computes this call."""
        return (features.device.type == 'cpu' and features.dtype == torch.float32 and features.dim() == 4
                and self.pool_mode == 'avg' and not self.use_torchvision and not exporting_or_compiling()
                and not (torch.is_grad_enabled() and (features.requires_grad or rois.requires_grad)))

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if self.fast_path(features, rois):
            return roi_align_separable(features, rois, self.output_size, self.spatial_scale, self.sampling_ratio,
                                       self.aligned)
        return super().forward(features, rois)

    @classmethod
    def from_roi_align(cls, layer: RoIAlign) -> SeparableRoIAlign:
        return cls(layer.output_size, layer.spatial_scale, layer.sampling_ratio, layer.pool_mode, layer.aligned,
                   layer.use_torchvision)


def convert_roi_aligns(model: nn.Module) -> int:
    """Replace, in place, every mmcv ``RoIAlign`` of ``model`` with a :class:`SeparableRoIAlign` of the same
    configuration (it has no parameters). Returns how many were replaced."""
    return replace_modules(model, lambda m: type(m) is RoIAlign, SeparableRoIAlign.from_roi_align)

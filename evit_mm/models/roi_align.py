"""RoIAlign (average mode) as two small matrix products per RoI, for two-stage detectors on the CPU.

He et al., "Mask R-CNN", ICCV 2017: each output bin averages bilinear samples on a regular grid inside it. Bilinear
weights are products of a row weight and a column weight, and the grid is the product of its rows and columns, so
a bin's average is ``Ay[ph] F Ax[pw]^T``: ``Ay`` ``(pooled_h, H)`` holds each bin row's averaged row weights and
``Ax`` ``(pooled_w, W)`` its column weights. Per RoI that is one GEMM over the rows of the RoI's window of the map
and a batched one over its columns, on the channels-last map as it is (every channel of a pixel is contiguous).

The backward pass is the transpose of the same products (``Ay^T dY Ax`` added into each RoI's window).

Why our own: mmcv's CPU RoIAlign runs on one thread, channel plane by channel plane, and reads NCHW memory (its
compiled op needs a contiguous copy of a channels-last map, ``evit_mm.compat.mmcv_ops``). Mask R-CNN-EViT-M4
at 800x1333 spent 1.3 s of a 2.1 s prediction in it on 2 AVX2 cores, and its forward and backward took 2.9 s of a
5.4 s training step of the Mask R-CNN demo (``docs/benchmarks.md``, "RoIAlign as matrix products"). Same sampling
rules as mmcv's kernel (``aligned`` offset, adaptive ``sampling_ratio=0`` grids, samples beyond one pixel outside
the map dropped, edge clamping); values and gradients differ by float rounding only.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass
class _RoIWeights:
    """Per RoI: averaged bilinear weights of the bin rows ``(R, pooled_h, H)`` and columns ``(R, pooled_w, W)``, and
    the window of the map they touch, ``(image, y0, y1, x0, x1)`` (empty where no sample lands inside the map)."""

    rows: torch.Tensor
    cols: torch.Tensor
    windows: list[tuple[int, int, int, int, int]]

    def to(self, dtype: torch.dtype) -> _RoIWeights:
        """The same weights in ``dtype``."""
        return _RoIWeights(self.rows.to(dtype), self.cols.to(dtype), self.windows)


def _roi_weights(rois: torch.Tensor, shape: tuple[int, int], output_size: tuple[int, int], spatial_scale: float,
                 sampling_ratio: int, aligned: bool, dtype: torch.dtype) -> _RoIWeights:
    """The weights of every RoI in ``dtype``, float32 at least: the sampling positions need it (bfloat16 resolves
    only 2 pixels of a stride-4 map beyond x = 256)."""
    height, width = shape
    boxes = rois[:, 1:].to(torch.promote_types(dtype, torch.float32)) * spatial_scale - (0.5 if aligned else 0.0)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if not aligned:  # mmcv keeps this for backward compatibility only
        widths, heights = widths.clamp(min=1.0), heights.clamp(min=1.0)
    rows, row_first, row_end = _axis_weights(boxes[:, 1], heights, output_size[0], sampling_ratio, height)
    cols, col_first, col_end = _axis_weights(boxes[:, 0], widths, output_size[1], sampling_ratio, width)
    windows = list(zip(rois[:, 0].long().tolist(), row_first.tolist(), row_end.tolist(), col_first.tolist(),
                       col_end.tolist()))
    return _RoIWeights(rows, cols, windows)


def _nhwc(features: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W)`` as contiguous ``(N, H, W, C)`` memory: a view of a channels-last map, a copy otherwise."""
    maps = features.permute(0, 2, 3, 1)
    return maps if maps.is_contiguous() else maps.contiguous()


def _window(maps: torch.Tensor, image: int, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
    """The window ``[y0, y1) x [x0, x1)`` of NHWC ``maps`` as a ``(h, w*C)`` matrix whose rows are ``W*C`` apart
    (a view, read and written in place)."""
    _, height, width, channels = maps.shape
    offset = maps.storage_offset() + ((image * height + y0) * width + x0) * channels
    return maps.as_strided((y1 - y0, (x1 - x0) * channels), (width * channels, 1), offset)


def _forward(maps: torch.Tensor, weights: _RoIWeights, output_size: tuple[int, int]) -> torch.Tensor:
    """Per RoI, the rows first, ``(pooled_h, h) @ (h, w*C)``, then the columns of each bin row,
    ``(pooled_w, w) @ (w, C)``: ``(R, pooled_h, pooled_w, C)``. Five tensor ops per RoI (host time dominates for
    small RoIs), hence the views taken once and the windows as strided views of the map."""
    pooled_h, pooled_w = output_size
    channels = maps.shape[3]
    out = maps.new_zeros(len(weights.windows), pooled_h, pooled_w, channels)
    for (image, y0, y1, x0, x1), bin_rows, bin_cols, bins in zip(weights.windows, weights.rows.unbind(0),
                                                                 weights.cols.unbind(0), out.unbind(0)):
        if y1 <= y0 or x1 <= x0:
            continue  # no sample inside the map: zeros, as mmcv gives
        by_rows = torch.mm(bin_rows.narrow(1, y0, y1 - y0), _window(maps, image, y0, y1, x0, x1))
        torch.bmm(bin_cols.narrow(1, x0, x1 - x0).expand(pooled_h, -1, -1),
                  by_rows.view(pooled_h, x1 - x0, channels), out=bins)
    return out


def _backward(grad_out: torch.Tensor, weights: _RoIWeights, maps_shape: torch.Size) -> torch.Tensor:
    """The gradient of :func:`_forward` with respect to the NHWC maps: per RoI, ``Ax^T`` per bin row, then
    ``Ay^T`` accumulated into the RoI's window (in RoI order, so overlapping windows add up exactly)."""
    grad_maps = grad_out.new_zeros(maps_shape)
    pooled_h = grad_out.shape[1]
    channels = maps_shape[3]
    for (image, y0, y1, x0, x1), bin_rows, bin_cols, grad_bins in zip(weights.windows, weights.rows.unbind(0),
                                                                      weights.cols.unbind(0), grad_out.unbind(0)):
        if y1 <= y0 or x1 <= x0:
            continue
        w = x1 - x0
        by_rows = torch.bmm(bin_cols.narrow(1, x0, w).t().expand(pooled_h, -1, -1), grad_bins)  # (ph, w, C)
        _window(grad_maps, image, y0, y1, x0, x1).addmm_(bin_rows.narrow(1, y0, y1 - y0).t(),
                                                          by_rows.view(pooled_h, w * channels))
    return grad_maps


class _SeparableRoIAlignFunction(torch.autograd.Function):
    """:func:`roi_align_separable` with its backward (no gradient for the boxes, as in mmcv). Lower-precision
    features (bfloat16 under CPU autocast) are sampled in their dtype, and their gradient, where overlapping RoIs add
    up in the map, is summed in float32 and rounded once."""

    @staticmethod
    def forward(ctx, features, rois, output_size, spatial_scale, sampling_ratio, aligned):
        weights = _roi_weights(rois, features.shape[2:], output_size, spatial_scale, sampling_ratio, aligned,
                               features.dtype)
        maps = _nhwc(features)
        ctx.weights, ctx.maps_shape, ctx.dtype = weights, maps.shape, features.dtype
        return _forward(maps, weights.to(features.dtype), output_size).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad_output):
        grad_out = grad_output.permute(0, 2, 3, 1).to(ctx.weights.rows.dtype, memory_format=torch.contiguous_format)
        # in the weights' dtype also where the backward pass runs inside an autocast region: autocast would cast the
        # products to bfloat16, which the float32 sum in the map then cannot take in place
        with torch.autocast('cpu', enabled=False):
            grad_maps = _backward(grad_out, ctx.weights, ctx.maps_shape)
        return grad_maps.permute(0, 3, 1, 2).to(ctx.dtype), None, None, None, None, None


def roi_align_separable(features: torch.Tensor, rois: torch.Tensor, output_size: tuple[int, int],
                        spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True) -> torch.Tensor:
    """mmcv's average-mode RoIAlign of ``features`` ``(N, C, H, W)`` (any memory layout) at ``rois`` ``(R, 5)``
    (batch index, x1, y1, x2, y2 in image pixels): ``(R, C, *output_size)``, channels-last memory; differentiable
    with respect to ``features``."""
    return _SeparableRoIAlignFunction.apply(features, rois, tuple(output_size), spatial_scale, sampling_ratio,
                                            aligned)


#: Feature dtypes :class:`SeparableRoIAlign` computes itself (its GEMMs in that dtype, the geometry in float32).
FAST_PATH_DTYPES = (torch.float32, torch.bfloat16)


class SeparableRoIAlign(RoIAlign):
    """mmcv's ``RoIAlign`` that runs :func:`roi_align_separable` (forward and backward) for eager CPU float32 calls
    in average mode, bfloat16 ones too (CPU autocast), and mmcv's op everywhere else (GPU, max pooling, tracing and
    export). Same arguments."""

    def fast_path(self, features: torch.Tensor) -> bool:
        """Whether :func:`roi_align_separable` computes this call."""
        return (features.is_cpu and features.dtype in FAST_PATH_DTYPES and features.dim() == 4
                and self.pool_mode == 'avg' and not self.use_torchvision and not exporting_or_compiling())

    def forward(self, features: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
        if self.fast_path(features):
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

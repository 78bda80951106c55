"""Convolutions through torch's GEMM where that beats oneDNN on the CPU.

Two cases, both on channels-last CPU maps, both the same values as ``nn.Conv2d`` up to float rounding:

- a 1x1, stride-1 conv is one GEMM over the pixels (:func:`pointwise_gemm`, also used by the deployed
  :class:`~.fused_conv.FusedConv2d`): the NHWC memory already is the ``(B*H*W, C)`` matrix, so the GEMM needs no
  copy, and its backward is two more GEMMs;
- the *weight gradient* of a dense strided conv (the stem's 3x3 stride-2 convs) is a GEMM of the output
  gradient with the im2col matrix of the input; the forward pass and the input gradient stay with oneDNN.

Why (``docs/benchmarks.md``, "Training and deploy through GEMMs"): on 2 AVX2 cores torch's oneDNN 1x1 convolution
ran the backward pass of EfficientViT-M4's FFN shapes at 45-59 GMAC/s, torch's GEMMs at 68-71; oneDNN's
channels-last weight gradient of the stem's 32->64 conv at 1x800x1344 took 17-36 ms, im2col plus one GEMM 9 ms.
On AVX-512 CPUs the balance depends on the CPU: on AMD's Zen 4 oneDNN's convolutions made M4's training step
1.06-1.08x faster than these GEMMs (20 interleaved steps; "bfloat16 weights on a CPU ..." in ``docs/benchmarks.md``);
on an Intel Xeon the 1x1 GEMMs made it 1.06-1.09x faster while the im2col weight gradients lost (0.96-0.97x). So each
case has its own default by the CPU (:func:`~.eager_kernels.own_kernel_measured_faster`).

The im2col matrix is built and multiplied in chunks of at most :data:`IM2COL_CHUNK_ELEMENTS`: a whole matrix of the
16->32 conv at 1x800x1344 (39 MB) is above glibc's largest mmap threshold and page-faulted on every step (28 ms
against oneDNN's 19 ms); in 8 MB chunks it took 12 ms. With 8 input channels im2col lost to oneDNN (6.4
against 3.5 ms, M0's 8->16 conv), hence :data:`IM2COL_MIN_IN_CHANNELS`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..compat.torch_api import is_autocast_enabled
from .eager_kernels import eager_channels_last_cpu

#: Fewest input channels for which the im2col weight gradient is used (measured crossover on the CPU).
IM2COL_MIN_IN_CHANNELS = 16
#: Most elements of one im2col chunk (8 MB in float32): small enough for glibc to reuse freed heap memory instead
#: of mapping fresh pages, large enough for an efficient GEMM (2-8 MB chunks measured the same).
IM2COL_CHUNK_ELEMENTS = 1 << 21


def is_pointwise(conv: nn.Conv2d) -> bool:
    """Whether ``conv`` is a 1x1, stride-1, unpadded, ungrouped convolution: a GEMM over the pixels."""
    return conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.groups == 1


def pointwise_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   residual: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """``residual + conv2d(x, weight, bias)`` or ``relu(conv2d(x, weight, bias))`` (or the conv alone) for a 1x1
    ``weight`` on a channels-last map ``x``, as one GEMM on the NHWC pixel matrix (a view of ``x``, no copy); the
    result is channels-last too.

    ``addmm`` starts from the residual (when it is a channels-last map of the output's shape and dtype) or from the
    bias, so that add costs no pass of its own; with both, the bias is added in the pass that copies the residual into
    the output (1.00-1.06x per call at M4's FFN shapes against adding it after the GEMM). The ReLU runs in place on
    the output while it is in cache. Differentiable.
    """
    batch, in_channels, height, width = x.shape
    out_channels = weight.shape[0]
    pixels = x.permute(0, 2, 3, 1).reshape(-1, in_channels)
    weight = weight.view(out_channels, in_channels).t()
    if (residual is not None and residual.shape == (batch, out_channels, height, width) and residual.dtype == x.dtype
            and residual.is_contiguous(memory_format=torch.channels_last)):
        rows = residual.permute(0, 2, 3, 1).reshape(-1, out_channels)
        y = torch.addmm(rows, pixels, weight) if bias is None else torch.add(rows, bias).addmm_(pixels, weight)
        residual = None  # added
    else:
        y = pixels.mm(weight) if bias is None else torch.addmm(bias, pixels, weight)
        if relu:
            y.relu_()
    y = y.view(batch, height, width, out_channels).permute(0, 3, 1, 2)
    return y if residual is None else residual + y


def im2col_weight_grad_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv``'s weight gradient will be needed and computed by :func:`im2col_weight_grad`: a dense
    (ungrouped, undilated, bias-free) conv larger than 1x1 with at least :data:`IM2COL_MIN_IN_CHANNELS` input
    channels, in float32 or float64 without autocast (the measured case). The caller has checked
    :func:`~.eager_kernels.eager_channels_last_cpu`."""
    return (conv.groups == 1 and conv.kernel_size != (1, 1) and conv.dilation == (1, 1) and conv.bias is None
            and conv.in_channels >= IM2COL_MIN_IN_CHANNELS and isinstance(conv.padding, tuple)
            and torch.is_grad_enabled() and conv.weight.requires_grad and x.dtype == conv.weight.dtype
            and not is_autocast_enabled('cpu'))


def tap_bands(start: int, stop: int, in_size: int, kernel: int, stride: int,
              padding: int) -> list[tuple[int, int, int, int]]:
    """Output positions ``[start, stop)`` along one axis of a conv, in bands ``(first, end, tap_first, tap_end)``
    within which the same kernel taps ``[tap_first, tap_end)`` land inside the unpadded input (the others land on
    the zero padding): the interior positions, all of whose taps are inside, as one band, each position near a
    border as a band of its own."""
    first_inside = -(-padding // stride)  # first position whose first tap is inside
    end_inside = max(first_inside, (in_size - kernel + padding) // stride + 1)  # past the last whose last tap is
    bands = [(i, i + 1) for i in range(start, min(stop, first_inside))]
    if max(start, first_inside) < min(stop, end_inside):
        bands.append((max(start, first_inside), min(stop, end_inside)))
    bands += [(i, i + 1) for i in range(max(start, end_inside), stop)]
    return [(a, b, max(0, padding - a * stride), min(kernel, in_size + padding - (b - 1) * stride))
            for a, b in bands]


def im2col_chunk(pixels: torch.Tensor, images: slice, rows: slice, kernel_size: tuple[int, int],
                 stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """The ``(images * rows * Wo, kh*kw*C)`` im2col matrix of output ``rows`` (a slice with a stop) of ``images``
    (likewise) of a conv over ``pixels``, the NHWC view of its unpadded input: one strided copy for the interior and
    one per border row or column (:func:`tap_bands`), whose taps on the zero padding are zero-filled."""
    (kh, kw), (sh, sw), (ph, pw) = kernel_size, stride, padding
    height, width, channels = pixels.shape[1:]
    out_w = (width + 2 * pw - kw) // sw + 1
    s_b, s_h, s_w, s_c = pixels.stride()
    n_images, n_rows = images.stop - images.start, rows.stop - rows.start
    columns = pixels.new_empty(n_images * n_rows * out_w, kh * kw * channels)
    patches = columns.view(n_images, n_rows, out_w, kh, kw, channels)
    column_bands = tap_bands(0, out_w, width, kw, sw, pw)
    for i0, i1, u0, u1 in tap_bands(rows.start, rows.stop, height, kh, sh, ph):
        for j0, j1, v0, v1 in column_bands:
            band = patches[:, i0 - rows.start:i1 - rows.start, j0:j1]
            if (u0, u1, v0, v1) != (0, kh, 0, kw):
                band.zero_()  # taps on the padding
            if u0 < u1 and v0 < v1:
                offset = (pixels.storage_offset() + images.start * s_b + (i0 * sh + u0 - ph) * s_h
                          + (j0 * sw + v0 - pw) * s_w)
                band[:, :, :, u0:u1, v0:v1].copy_(pixels.as_strided(
                    (n_images, i1 - i0, j1 - j0, u1 - u0, v1 - v0, channels),
                    (s_b, sh * s_h, sw * s_w, s_h, s_w, s_c), offset))
    return columns


def im2col_weight_grad(grad_output: torch.Tensor, x: torch.Tensor, kernel_size: tuple[int, int],
                       stride: tuple[int, int], padding: tuple[int, int],
                       chunk_elements: int = IM2COL_CHUNK_ELEMENTS) -> torch.Tensor:
    """The weight gradient of ``conv2d(x, w, stride=stride, padding=padding)`` as GEMMs with the im2col matrix.

    Chunks of whole images, or of output rows of one image, are gathered into ``(rows, kh*kw*C)`` im2col matrices
    (NHWC patch order) of at most ``chunk_elements`` (:func:`im2col_chunk`), and the gradient accumulates
    ``im2col^T @ grad_output`` over them, laid out back to ``(N, C, kh, kw)``. The patches come from ``x`` itself:
    no zero-padded copy of it is made (in the training step's profile at 1x800x1344 that copy of the stem's largest
    map, into a fresh allocation, took 5-7 ms; the 16->32 conv's whole weight gradient now takes 9 ms alone).
    """
    out_channels, out_h, out_w = grad_output.shape[1:]
    batch, channels = x.shape[:2]
    patch = kernel_size[0] * kernel_size[1] * channels  # one im2col row
    pixels = x.permute(0, 2, 3, 1)  # NHWC view (contiguous for the channels-last maps this is used on)
    grad_pixels = grad_output.permute(0, 2, 3, 1)
    rows_per_chunk = max(1, chunk_elements // (out_w * patch))
    images_per_chunk, rows_per_chunk = max(1, rows_per_chunk // out_h), min(rows_per_chunk, out_h)
    grad_weight = x.new_zeros(patch, out_channels)
    for b in range(0, batch, images_per_chunk):
        images = slice(b, min(b + images_per_chunk, batch))
        for r in range(0, out_h, rows_per_chunk):
            rows = slice(r, min(r + rows_per_chunk, out_h))
            columns = im2col_chunk(pixels, images, rows, kernel_size, stride, padding)
            grad_rows = grad_pixels[images, rows].reshape(-1, out_channels)
            # columns^T @ grad rather than grad^T @ columns: same products, and MKL ran the stem's shapes
            # 1.04-1.8x faster this way round (16800x288 columns: 4.97-6.07 ms against 7.53-9.08)
            grad_weight.addmm_(columns.t(), grad_rows)
    return grad_weight.view(*kernel_size, channels, out_channels).permute(3, 2, 0, 1)


class _Conv2dIm2colWeightGrad(torch.autograd.Function):
    """``conv2d`` whose forward and input gradient are oneDNN's and whose weight gradient is
    :func:`im2col_weight_grad`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad_output = grad_output.contiguous(memory_format=torch.channels_last)
        grad_input = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_input = torch.ops.aten.convolution_backward(
                grad_output, x, weight, None, ctx.stride, ctx.padding, (1, 1), False, (0, 0), 1,
                (True, False, False))[0]
        if ctx.needs_input_grad[1]:
            grad_weight = im2col_weight_grad(grad_output, x, weight.shape[2:], ctx.stride, ctx.padding)
            grad_weight = grad_weight.contiguous(memory_format=torch.contiguous_format
                                                 if weight.is_contiguous() else torch.channels_last)
        return grad_input, grad_weight, None, None


def gemm_conv(conv: nn.Conv2d, x: torch.Tensor, pointwise: bool = True, im2col: bool = True) -> torch.Tensor:
    """``conv(x)``, through a GEMM where one of the two cases of this module applies and is asked for (``pointwise``,
    ``im2col``): only in eager calls on channels-last CPU maps (traced, exported and compiled graphs keep the conv),
    and for 1x1 convs only while autograd records (the gain is in the backward pass; inference measured the same
    either way)."""
    if not eager_channels_last_cpu(x):
        return conv(x)
    if pointwise and is_pointwise(conv) and torch.is_grad_enabled():
        return pointwise_gemm(x, conv.weight, conv.bias)
    if im2col and im2col_weight_grad_applies(conv, x):
        return _Conv2dIm2colWeightGrad.apply(x, conv.weight, conv.stride, conv.padding)
    return conv(x)

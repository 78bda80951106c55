"""Depthwise convolutions on the CPU whose input gradient is computed as a transposed convolution, where torch's
own kernel for it is slow.

Two cases, each switchable off on :class:`~.layers.ConvBN`:

- **bfloat16, strided, or at any stride where torch's kernel is slow** (:func:`transposed_input_grad_dtype`).
  torch's CPU kernel for the bfloat16 input gradient of a strided depthwise convolution (torch 2.14.1, oneDNN,
  2-core AVX512-BF16 machine) is 35-90x slower than float32's.
  EfficientViT's :class:`~.layers.PatchMerging` has one such conv (3x3, stride 2, 4x the channels) between stages,
  so under CPU autocast (``tools/train.py --amp``) the two of M4 took 37 of the 214 ms of a 16x224x224 training
  step, three quarters of what the backward passes of all its 1x1 convolutions took (``docs/benchmarks.md``,
  "bfloat16 training on the CPU: ..."). At M4's shapes, the same gradient as a float32 transposed convolution, casts
  included: 0.18-0.53 ms against 9.7-23.7 ms. Its values are the exact gradient rounded once to bfloat16, as close
  to it as bfloat16's own kernel gets; the forward pass and the weight gradient (fast in bfloat16) stay bfloat16's,
  bit for bit.
- **float32, channels innermost, where torch's kernel is slow** (:func:`transposed_input_grad_dtype`). torch 2.1's
  CPU input gradient of a channels-last depthwise convolution is 100-300x slower than the same gradient as a transposed
  convolution (at M4's shapes 6.4-110 ms against 0.06-0.34 ms; 671 against 8.9 ms for the stride-2 conv at
  1x800x1344), which made evit_mm's training step 0.48-0.56x timm's on the OpenMMLab stack ``mim`` installs; torch
  2.13's and 2.14's kernels are as fast as the transposed convolution. Which releases in between are slow is not
  known, so each process measures it once (:func:`torch_depthwise_input_grad_is_slow`) and takes this path only there.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .eager_kernels import eager_conv_dtype, exporting_or_compiling
from .grad_layout import memory_format_of


#: torch's input-gradient kernel counts as slow where it takes this many times the transposed convolution's time
#: (measured: about 1x on torch 2.14, 100-300x on torch 2.1).
SLOW_KERNEL_FACTOR = 4.0


def _best_time(call: Callable[[], object], repeats: int = 3) -> float:
    call()  # warm-up: oneDNN builds its primitive on the first call
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


@functools.cache
def torch_depthwise_input_grad_is_slow() -> bool:
    """Whether torch's CPU kernel for the float32 input gradient of a channels-last depthwise convolution takes over
    :data:`SLOW_KERNEL_FACTOR` times the same gradient as a transposed convolution, timed once per process on an
    8x64x14x14 map with a 3x3 kernel (a few milliseconds where the kernel is slow, under one where it is not)."""
    with torch.no_grad(), torch.autocast('cpu', enabled=False):
        grad_output = torch.randn(8, 64, 14, 14).contiguous(memory_format=torch.channels_last)
        x, weight = torch.randn_like(grad_output), torch.randn(64, 1, 3, 3)
        torch_kernel = _best_time(lambda: torch.ops.aten.convolution_backward(
            grad_output, x, weight, None, (1, 1), (1, 1), (1, 1), False, (0, 0), 64, (True, False, False)))
        transposed = _best_time(lambda: F.conv_transpose2d(grad_output, weight, None, 1, 1, 0, 64))
    return torch_kernel > SLOW_KERNEL_FACTOR * transposed


def _is_plain_depthwise(conv: nn.Conv2d) -> bool:
    """Depthwise (one input and one output channel per group), bias-free, undilated, with numeric padding."""
    return (conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels and conv.bias is None
            and conv.dilation == (1, 1) and isinstance(conv.padding, tuple))


def _channels_innermost(x: torch.Tensor) -> bool:
    """Channels-last as torch's convolutions see it: a channels-last map, or a view of tokens with channels innermost
    (the attention's query, a window of its ``(B, N, C)`` tokens permuted to NCHW)."""
    return x.dim() == 4 and x.stride(1) == 1


def _grad_layout(x: torch.Tensor) -> torch.memory_format:
    """The layout of ``x``'s gradient: channels-last where ``x`` has its channels innermost (a view of tokens
    included, whose gradient the view's backward then reads as it is), else ``x``'s own."""
    return torch.channels_last if _channels_innermost(x) else memory_format_of(x)


def _records_gradient(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and (x.requires_grad or conv.weight.requires_grad)


def transposed_input_grad_dtype(conv: nn.Conv2d, x: torch.Tensor, bfloat16: bool = True,
                                float32: bool = True) -> torch.dtype | None:
    """The dtype in which :func:`depthwise_conv_transposed_input_grad` computes ``conv(x)`` in this call, or None
    where torch's own path runs. Both cases need a depthwise convolution (bias-free, undilated, numeric padding) of a
    CPU map in an eager call that records a gradient; then, as the module's docstring says:

    - with ``bfloat16``: bfloat16 where the conv computes in it (autocast, or bfloat16 operands) and is strided, or
      at any stride where torch's kernel for the input gradient is slow (:func:`torch_depthwise_input_grad_is_slow`,
      measured in float32; torch 2.1's bfloat16 kernel at stride 1 is 20-90x slower than the float32 transposed
      conv, torch 2.14's as fast);
    - with ``float32``: float32 where the conv computes in it, the map has its channels innermost
      (:func:`_channels_innermost`) and torch's kernel is slow.

    Device first: the cheapest rejection, where every call on a GPU ends; compiled and traced calls before the
    measurement (dynamo cannot trace a timing), which comes before the costlier checks of the float32 case: where
    torch's kernel is fast, every float32 call ends there."""
    if not (x.is_cpu and _is_plain_depthwise(conv) and _records_gradient(conv, x)) or exporting_or_compiling():
        return None
    dtype = eager_conv_dtype(x, conv.weight)
    if dtype == torch.bfloat16:
        applies = bfloat16 and (conv.stride != (1, 1) or torch_depthwise_input_grad_is_slow())
    else:
        applies = (float32 and dtype == torch.float32 and torch_depthwise_input_grad_is_slow()
                   and _channels_innermost(x))
    return dtype if applies else None


class _DepthwiseConvTransposedInputGrad(torch.autograd.Function):
    """Depthwise ``conv2d`` whose input gradient is a transposed convolution computed in float32, cast to the input's
    dtype and layout; the forward pass and the weight gradient are torch's own."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, weight = ctx.saved_tensors
        stride, padding, groups = ctx.stride, ctx.padding, weight.shape[0]
        grad_input = grad_weight = None
        with torch.autocast('cpu', enabled=False):  # a backward pass called inside autocast would undo the point
            if ctx.needs_input_grad[0]:
                # the input rows and columns the conv's last window did not reach: the transposed conv adds them
                output_padding = tuple((size + 2 * pad - k) % s for size, pad, k, s in
                                       zip(x.shape[2:], padding, weight.shape[2:], stride))
                grad_input = F.conv_transpose2d(grad_output.float(), weight.float(), None, stride, padding,
                                                output_padding, groups)
                # in the map's layout: a BatchNorm backward below that mixes layouts runs ~10x slower
                grad_input = grad_input.to(x.dtype, memory_format=_grad_layout(x))
            if ctx.needs_input_grad[1]:
                grad_weight = torch.ops.aten.convolution_backward(
                    grad_output, x, weight, None, stride, padding, (1, 1), False, (0, 0), groups,
                    (False, True, False))[1]
        return grad_input, grad_weight, None, None


def depthwise_conv_transposed_input_grad(conv: nn.Conv2d, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``conv(x)`` computed in ``dtype`` (bfloat16: the same values as autocast's or a bfloat16 conv's), torch's own
    forward pass and weight gradient, with the input gradient as a float32 transposed convolution, rounded once to
    ``dtype`` (see the module's docstring). Only with the dtype :func:`transposed_input_grad_dtype` gives."""
    return _DepthwiseConvTransposedInputGrad.apply(x.to(dtype), conv.weight.to(dtype), conv.stride, conv.padding)

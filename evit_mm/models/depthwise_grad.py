"""The input gradient of a strided depthwise convolution in bfloat16 on the CPU, computed in float32.

Why: torch's CPU kernel for the bfloat16 input gradient of a strided depthwise convolution (torch 2.14.1, oneDNN,
2-core AVX512-BF16 machine) is 35-90x slower than float32's. EfficientViT's :class:`~.layers.PatchMerging` has one
such conv (3x3, stride 2, 4x the channels) between stages, so under CPU autocast (``tools/train.py --amp``) the two
of M4 took 37 of the 214 ms of a 16x224x224 training step, three quarters of what the backward passes of all its
1x1 convolutions took (``docs/benchmarks.md``, "bfloat16 training on the CPU: ..."). At M4's shapes, the same
gradient as a float32 transposed convolution, casts included: 0.18-0.53 ms against 9.7-23.7 ms. Its values are the
exact gradient rounded once to bfloat16, as close to it as bfloat16's own kernel gets; the forward pass and the
weight gradient (fast in bfloat16) stay bfloat16's, bit for bit.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .eager_kernels import eager_conv_dtype, exporting_or_compiling
from .grad_layout import memory_format_of


def float32_input_grad_applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv(x)`` is a strided depthwise convolution (bias-free, undilated, numeric padding) in bfloat16 on
    the CPU, in an eager call that records a gradient: the case :func:`depthwise_conv_float32_input_grad` serves.
    Device first: the cheapest rejection, where every call on a GPU ends."""
    return (x.is_cpu and conv.stride != (1, 1) and conv.groups > 1
            and conv.groups == conv.in_channels == conv.out_channels and conv.bias is None
            and conv.dilation == (1, 1) and isinstance(conv.padding, tuple) and torch.is_grad_enabled()
            and (x.requires_grad or conv.weight.requires_grad) and eager_conv_dtype(x, conv.weight) == torch.bfloat16
            and not exporting_or_compiling())


class _DepthwiseConvFloat32InputGrad(torch.autograd.Function):
    """Depthwise ``conv2d`` of bfloat16 operands whose input gradient is a float32 transposed convolution."""

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
                grad_input = grad_input.to(x.dtype, memory_format=memory_format_of(x))
            if ctx.needs_input_grad[1]:
                grad_weight = torch.ops.aten.convolution_backward(
                    grad_output, x, weight, None, stride, padding, (1, 1), False, (0, 0), groups,
                    (False, True, False))[1]
        return grad_input, grad_weight, None, None


def depthwise_conv_float32_input_grad(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` in bfloat16, the same values as autocast's or a bfloat16 conv's, with the input gradient computed
    in float32 (see the module's docstring). Only where :func:`float32_input_grad_applies`."""
    return _DepthwiseConvFloat32InputGrad.apply(x.to(torch.bfloat16), conv.weight.to(torch.bfloat16), conv.stride,
                                                conv.padding)

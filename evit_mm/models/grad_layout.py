"""The gradient a feature map receives in the backward pass, laid out like the map.

Why: torch's CPU BatchNorm backward (``native_batch_norm_backward``, torch 2.14.1, float32 and float64, train and eval
mode) returns wrong values when one of its input and output gradient is NCHW and the other a channels-last tensor of
batch size 1 whose batch stride is not ``C * H * W``. Size-1 dimensions may have any stride, and such gradients are
what a batched product hands back at batch 1: ``bmm``/``matmul`` backward of a ``(1, N, C)`` operand whose map was
read as ``flatten(2).transpose(1, 2)``. Two places met it (found on 2026-11-30 by a float64 fuzz of the fast paths
against the reference path, ``tests/test_models/test_fast_paths_stateful.py``, and confirmed by gradcheck):

- the reference (NCHW) attention path, wherever the whole batch is one window (batch 1 and a map no larger than
  the window): the query's gradient reached its BatchNorm that way, and every gradient below was unrelated to
  the true one (timm's ``efficientvit_msra``, which computes as the official code does, fails gradcheck there
  too; the official code itself was not run);
- a head that reads the backbone's last map as tokens, at batch 1, with NCHW maps (``channels_last=False``).

Laid out like the map, the pair has one layout and the kernel reads it right (and runs its faster same-layout path).
The token-GEMM attention (the default) never hands its BatchNorms such a pair.
"""
from __future__ import annotations

import functools

import torch

from ..compat.torch_api import is_compiling


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """``torch.channels_last`` for a 4-d map laid out channels-last (and not also NCHW-contiguous), else
    ``torch.contiguous_format``."""
    channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    return torch.channels_last if channels_last else torch.contiguous_format


def _in_layout(memory_format: torch.memory_format, grad: torch.Tensor | None) -> torch.Tensor | None:
    # a channels-last tensor with an odd batch stride counts as contiguous in that format: no copy then, and the
    # kernel reads it right against a channels-last input; against an NCHW input it is copied into NCHW. (None:
    # an undefined gradient, as double backward passes through gradcheck.)
    return None if grad is None else grad.contiguous(memory_format=memory_format)


def grad_in_layout(x: torch.Tensor, memory_format: torch.memory_format | None = None) -> torch.Tensor:
    """Return ``x`` after registering a hook that hands its gradient on in ``memory_format`` (default: ``x``'s own
    layout, :func:`memory_format_of`), where a gradient will reach it; not while compiling (graphs choose their
    own layouts)."""
    if x.requires_grad and not is_compiling():
        x.register_hook(functools.partial(_in_layout, memory_format or memory_format_of(x)))
    return x

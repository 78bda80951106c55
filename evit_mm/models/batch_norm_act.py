"""BatchNorm in training mode fused with the ReLU or the residual add after it, on channels-last CPU maps.

Why our own: in eager PyTorch, BatchNorm + ReLU in training is three operators forward (statistics, two passes over
the map; normalisation; ReLU) and two backward (the ReLU's mask, then BatchNorm's backward, two passes), each a pass
over a map that is long out of cache by then, and a ReLU output kept for the backward. The kernel here
(``csrc/batch_norm_act.cpp``) makes it two passes each way: one for the statistics (sums of the input less its first
row, in the accumulation type over blocks and in double across them), one for the normalised output with the ReLU or
the residual add applied; backward, one for both reductions and one for the input gradient, the ReLU's mask
recomputed from the input bit for bit. Alone, forward and backward together, it took 0.35-0.8x torch's time at
EfficientViT-M4's training shapes with a ReLU, 0.8-0.97x on the attention's token rows; M4's whole training step
got 1.02x faster at 16x224x224 and 1.04x at 1x800x1344 (``docs/benchmarks.md``, "BatchNorm fused with its ReLU or
residual add in training"). torch.compile's CPU code for the same fusion ran 3-8x slower than torch's eager kernels
on this project's machine, so the compiler is no substitute here.

The values are those of ``F.batch_norm`` (training mode, running statistics updated the same way) followed by the
ReLU or the add, up to float rounding (tests compare them in float64). The kernel is compiled on first use with the
C++ compiler the environment has (``torch.utils.cpp_extension``, cached under ``TORCH_EXTENSIONS_DIR`` or
``~/.cache/torch_extensions``; ``make setup`` builds it); where it cannot be built, a warning says why and torch's
operators run.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import shutil
from pathlib import Path
from types import ModuleType

import torch
from torch import nn

from .eager_kernels import exporting_or_compiling

logger = logging.getLogger(__name__)

#: The kernel's source, compiled on first use.
KERNEL_SOURCE = Path(__file__).with_name('csrc') / 'batch_norm_act.cpp'
#: Vector ISA flags per ``torch.backends.cpu.get_cpu_capability()``: explicit rather than ``-march=native``, so that
#: a build cached in a home directory shared by machines of one capability runs on all of them.
ISA_FLAGS = {
    'AVX512': ['-mavx512f', '-mavx512bw', '-mavx512vl', '-mavx512dq', '-mavx2', '-mfma'],
    'AVX2': ['-mavx2', '-mfma'],
}


def _cpp_extension_loader():
    """``torch.utils.cpp_extension.load``, imported without its warning that a CPU machine has no CUDA runtime, and
    with the ``ninja`` that ``make setup`` installs into the environment on ``PATH`` (torch runs ``ninja`` from
    ``PATH``, which an environment's ``bin`` is not on unless it is activated)."""
    extension_logger = logging.getLogger('torch.utils.cpp_extension')
    level = extension_logger.level
    extension_logger.setLevel(logging.ERROR)
    try:
        from torch.utils.cpp_extension import load
    finally:
        extension_logger.setLevel(level)
    if shutil.which('ninja') is None:
        try:
            import ninja
        except ImportError:
            pass  # torch's error names what is missing
        else:
            os.environ['PATH'] = os.pathsep.join([ninja.BIN_DIR, os.environ.get('PATH', '')])
    return load


@functools.cache
def batch_norm_act_kernels() -> ModuleType | None:
    """The compiled kernel module (built and cached on first call), or None where it cannot be built (a warning
    says why; torch's operators then run)."""
    capability = torch.backends.cpu.get_cpu_capability()
    try:
        load = _cpp_extension_loader()
        # no FMA contraction: the backward pass recomputes the forward pass's ReLU input and must get the same bits
        # one build per ISA and torch version (torch's cache rebuilds on a changed source or flags, not on a new torch)
        torch_version = re.sub(r'\W', '_', torch.__version__)
        return load(name=f'evit_mm_batch_norm_act_{capability.lower()}_torch{torch_version}',
                    sources=[str(KERNEL_SOURCE)],
                    extra_cflags=['-O3', '-fopenmp', '-ffp-contract=off', *ISA_FLAGS.get(capability, [])],
                    extra_ldflags=['-fopenmp'], verbose=False)
    except Exception as error:  # no compiler, no ninja, a failed build: all mean torch's operators
        logger.warning('evit_mm: the fused BatchNorm kernel could not be built (%s: %s); training runs torch\'s '
                       'BatchNorm and ReLU instead (same values). A C++ compiler and ninja are needed to build it.',
                       type(error).__name__, error)
        return None


class _BatchNormAct(torch.autograd.Function):
    """``relu(batch_norm(x))`` or ``batch_norm(x) + residual`` in training mode through the compiled kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, running_mean: torch.Tensor,
                running_var: torch.Tensor, momentum: float, eps: float, relu: bool,
                residual: torch.Tensor | None) -> torch.Tensor:
        kernels = batch_norm_act_kernels()
        out, mean, invstd = kernels.forward(x, weight, bias, running_mean, running_var, momentum, eps, relu, residual)
        ctx.save_for_backward(x, weight, bias, mean, invstd)
        ctx.relu = relu
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, bias, mean, invstd = ctx.saved_tensors
        grad = grad.contiguous(memory_format=torch.channels_last)
        grad_input, grad_weight, grad_bias = batch_norm_act_kernels().backward(
            grad, x, weight, bias, mean, invstd, ctx.relu)
        grad_residual = grad if ctx.needs_input_grad[8] else None
        return grad_input, grad_weight, grad_bias, None, None, None, None, None, grad_residual


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks or nn.modules.module._global_forward_hooks
                or nn.modules.module._global_forward_pre_hooks)


def batch_norm_act(bn: nn.Module, x: torch.Tensor, relu: bool = False,
                   residual: torch.Tensor | None = None) -> torch.Tensor | None:
    """``relu(bn(x))`` (``relu``) or ``bn(x) + residual`` (or ``bn(x)``) through the fused kernel, or None where it
    does not apply and the caller runs torch's operators: ``bn`` a plain ``nn.BatchNorm2d`` in training mode with
    affine parameters, running statistics and a momentum, and no hooks (SyncBatchNorm, ``norm_eval``, hooks that
    must see the call: torch's); ``x`` a channels-last float32 or float64 CPU map with more than one value per
    channel, in an eager call (traced, exported and compiled graphs keep their BatchNorm); ``residual``, where
    given, a channels-last map of ``x``'s shape and dtype; the kernel built."""
    if not (type(bn) is nn.BatchNorm2d and bn.training and x.is_cpu and x.dim() == 4
            and x.dtype in (torch.float32, torch.float64) and x.is_contiguous(memory_format=torch.channels_last)):
        return None
    if (bn.weight is None or bn.bias is None or bn.running_mean is None or bn.running_var is None
            or bn.momentum is None or x.numel() <= x.shape[1] or _has_hooks(bn) or exporting_or_compiling()):
        return None
    if any(t.dtype != x.dtype or not t.is_cpu for t in (bn.weight, bn.bias, bn.running_mean, bn.running_var)):
        return None
    if residual is not None and not (residual.shape == x.shape and residual.dtype == x.dtype and residual.is_cpu
                                     and residual.is_contiguous(memory_format=torch.channels_last)):
        return None
    if relu and residual is not None:
        raise ValueError('batch_norm_act applies either a ReLU or a residual add, not both')
    if batch_norm_act_kernels() is None:
        return None
    if bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
    return _BatchNormAct.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, bn.momentum, bn.eps, relu,
                               residual)

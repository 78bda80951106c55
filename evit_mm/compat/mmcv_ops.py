"""What mmcv's compiled ops need from their tensors: contiguous memory, and float32 on the CPU.

mmcv 2.x's C++/CUDA ops (RoIAlign, RoIPool, deformable convs, CARAFE, PSAMask, ...) index ``data_ptr()`` as if every
tensor were contiguous and do not check it (mmcv 1.3 raised an error; later versions dropped the check: mmcv issue
#2203, still open). A channels-last feature map, which is what EfficientViT's backbone emits and what convolutions
then keep, is read with its channels and pixels mixed up, silently: Mask R-CNN's RoIAlign returned features
unrelated to the boxes, on the CPU and on CUDA alike.

Their CPU kernels also take float32 only: under CPU autocast (bfloat16 features and scores) NMS raised "expected
scalar type Float but found BFloat16" and RoIAlign "not implemented for 'BFloat16'", so no two-stage detector
predicted under ``torch.autocast('cpu')`` (``tools/benchmark.py --dtype bf16``). Their CUDA kernels take float16.

:func:`install` wraps the ``forward`` and ``backward`` of every ``torch.autograd.Function`` of ``mmcv.ops`` so that
each tensor argument is made contiguous first (no copy where it already is), the fix the mmcv maintainers proposed
in that issue, applied to all of its ops at once, and bfloat16 or float16 CPU tensors are computed in float32
(floating-point outputs then cast back to their dtype, as are gradients). The ops' outputs and gradients are
then right for any memory layout and precision; for contiguous float32 inputs nothing changes. It runs when an
EfficientViT backbone is built, and does nothing where mmcv's compiled ops are not installed.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable

import torch
from torch.utils._pytree import tree_map_only

#: Set on a wrapped method, so that installing twice wraps nothing twice.
_WRAPPED = '_evit_mm_prepared'
#: Dtypes that mmcv's CPU kernels do not take and that are computed in float32 instead.
CPU_FLOAT32_FROM = (torch.bfloat16, torch.float16)


def _computed_in_float32(value: object) -> bool:
    """Whether ``value`` is a tensor of a dtype that mmcv's CPU kernels do not take."""
    return isinstance(value, torch.Tensor) and value.is_cpu and value.dtype in CPU_FLOAT32_FROM


def prepared(value: object) -> object:
    """``value`` as mmcv's kernels read it: a tensor contiguous, and float32 if it is a bfloat16 or float16 CPU
    tensor; anything else as it is."""
    if not isinstance(value, torch.Tensor):
        return value
    return value.float().contiguous() if _computed_in_float32(value) else value.contiguous()


def _with_prepared_tensors(method: Callable) -> Callable:
    """``method(ctx, *args, **kwargs)`` with every tensor among ``args`` and ``kwargs`` :func:`prepared`; where that
    computed half-precision CPU tensors in float32, the floating-point outputs are returned in their dtype (callers
    write them into tensors of it: mmdet's RoI extractors)."""
    @functools.wraps(method)
    def wrapper(ctx, *args, **kwargs):
        outputs = method(ctx, *map(prepared, args), **{k: prepared(v) for k, v in kwargs.items()})
        dtype = next((v.dtype for v in (*args, *kwargs.values()) if _computed_in_float32(v)), None)
        if dtype is None:
            return outputs
        return tree_map_only(torch.Tensor, lambda t: t.to(dtype) if t.dtype == torch.float32 else t, outputs)
    setattr(wrapper, _WRAPPED, True)
    return wrapper


def mmcv_op_functions() -> list[type[torch.autograd.Function]]:
    """Every ``torch.autograd.Function`` subclass defined in a module of ``mmcv.ops`` (empty without mmcv's ops)."""
    try:
        ops = importlib.import_module('mmcv.ops')
    except ImportError:  # mmcv without compiled ops (mmcv-lite): nothing reads raw memory
        return []
    functions = {}
    for info in pkgutil.iter_modules(ops.__path__, ops.__name__ + '.'):
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001  an op whose extension was not built cannot run either
            continue
        for value in vars(module).values():
            if (inspect.isclass(value) and issubclass(value, torch.autograd.Function)
                    and value.__module__ == module.__name__):
                functions[value] = None
    return list(functions)


@functools.cache
def install() -> int:
    """Make every mmcv op Function take :func:`prepared` tensors; idempotent. Returns how many methods were
    wrapped."""
    wrapped = 0
    for function in mmcv_op_functions():
        for name in ('forward', 'backward'):
            method = vars(function).get(name)
            if isinstance(method, staticmethod) and not getattr(method.__func__, _WRAPPED, False):
                setattr(function, name, staticmethod(_with_prepared_tensors(method.__func__)))
                wrapped += 1
    return wrapped

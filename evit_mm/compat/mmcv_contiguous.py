"""mmcv's compiled ops read their tensors' raw memory as contiguous NCHW, whatever the strides.

mmcv 2.x's C++/CUDA ops (RoIAlign, RoIPool, deformable convs, CARAFE, PSAMask, ...) index ``data_ptr()`` as if every
tensor were contiguous and do not check it (mmcv 1.3 raised an error; later versions dropped the check: mmcv issue
#2203, still open). A channels-last feature map, which is what EfficientViT's backbone emits and what convolutions
then keep, is read with its channels and pixels mixed up, silently: Mask R-CNN's RoIAlign returned features
unrelated to the boxes, on the CPU and on CUDA alike.

:func:`install` wraps the ``forward`` and ``backward`` of every ``torch.autograd.Function`` of ``mmcv.ops`` so that
each tensor argument is made contiguous first (no copy where it already is), the fix the mmcv maintainers proposed
in that issue, applied to all of its ops at once. The ops' outputs and gradients are then right for any memory
layout; for contiguous inputs nothing changes. It runs when an EfficientViT backbone with channels-last outputs is
built, and does nothing where mmcv's compiled ops are not installed.
"""
from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
from collections.abc import Callable

import torch

#: Set on a wrapped method, so that installing twice wraps nothing twice.
_WRAPPED = '_evit_mm_contiguous'


def _contiguous(value: object) -> object:
    return value.contiguous() if isinstance(value, torch.Tensor) else value


def _with_contiguous_tensors(method: Callable) -> Callable:
    """``method(ctx, *args, **kwargs)`` with every tensor among ``args`` and ``kwargs`` made contiguous."""
    @functools.wraps(method)
    def wrapper(ctx, *args, **kwargs):
        return method(ctx, *map(_contiguous, args), **{k: _contiguous(v) for k, v in kwargs.items()})
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
    """Make every mmcv op Function take contiguous tensors; idempotent. Returns how many methods were wrapped."""
    wrapped = 0
    for function in mmcv_op_functions():
        for name in ('forward', 'backward'):
            method = vars(function).get(name)
            if isinstance(method, staticmethod) and not getattr(method.__func__, _WRAPPED, False):
                setattr(function, name, staticmethod(_with_contiguous_tensors(method.__func__)))
                wrapped += 1
    return wrapped

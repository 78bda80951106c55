"""Let mmengine training checkpoints load under ``torch.load(weights_only=True)`` (torch's default since 2.6).

mmengine 0.10 calls ``torch.load`` without ``weights_only``, so ``--resume`` fails on the objects mmengine
pickles besides tensors: its message hub's ``HistoryBuffer`` and numpy arrays and scalars. The safe loader
stays on; this module allow-lists exactly those types, nothing that can run code.

``HistoryBuffer.__getstate__`` also pickles its class-level table of statistics functions, which pickle
writes as ``getattr(HistoryBuffer, 'min')``. Allow-listing ``getattr`` would let a checkpoint reach any
attribute of any allowed object, so instead the state is written without that table: the functions are
registered on the class at import time, and ``HistoryBuffer.__setstate__`` restores the defaults anyway.
Checkpoints written by mmengine without evit_mm imported still carry ``getattr`` and are refused.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer


def _numpy_types() -> list[Any]:
    """numpy types that mmengine checkpoints hold: arrays, scalars, dtypes (numpy 1.x and 2.x paths)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    types: list[Any] = [np.ndarray, np.dtype, multiarray._reconstruct, multiarray.scalar]
    dtype_classes = getattr(np, 'dtypes', None)
    if dtype_classes is not None:  # numpy >= 1.25 pickles dtypes by their class
        types += [getattr(dtype_classes, name) for name in dir(dtype_classes) if name.endswith('DType')]
    return types


def _history_buffer_state(self: HistoryBuffer) -> dict[str, Any]:
    """``HistoryBuffer`` state without the class-level statistics functions (see module docstring)."""
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def install() -> None:
    """Allow-list mmengine's checkpoint types for ``weights_only`` loading; idempotent."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    torch.serialization.add_safe_globals([HistoryBuffer, *_numpy_types()])

"""Let mmengine training checkpoints load under ``torch.load(weights_only=True)`` (torch's default since 2.6).

mmengine 0.10 calls ``torch.load`` without ``weights_only``, so ``--resume`` fails on the objects mmengine
pickles besides tensors: its message hub's ``HistoryBuffer`` and numpy arrays and scalars. The safe loader
stays on; this module allow-lists exactly those types, nothing that can run code.

``HistoryBuffer.__getstate__`` also pickles its class-level table of statistics functions, which pickle
writes as ``getattr(HistoryBuffer, 'min')``. Allow-listing ``getattr`` would let a checkpoint reach any
attribute of any allowed object, so instead the state is written without that table: the functions are
registered on the class at import time, and ``HistoryBuffer.__setstate__`` restores the defaults anyway.
Checkpoints written by mmengine without evit_mm imported still carry ``getattr`` and are refused.

torch before 2.4 has no ``add_safe_globals``, and its weights-only unpickler builds tensors and dicts only (no numpy
array, no ``HistoryBuffer``), so neither an evit_mm nor an mmengine training checkpoint would load safely there; and
before 2.6 ``torch.load`` unpickles anything by default, mmengine's ``--resume`` included. On those versions
(torch 2.1 is what OpenMMLab environments installed with ``mim`` run: the newest torch with prebuilt mmcv 2.1 wheels)
:func:`load_weights_only` reads with a pickle unpickler that resolves the same allow-list and nothing else, and
mmengine's loader for local files is replaced by it.
"""
from __future__ import annotations

import builtins
import codecs
import collections
import os
import pickle
import types
from collections.abc import Callable
from typing import IO, Any

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

#: torch's own weights-only loader takes an allow-list of extra types (``add_safe_globals``), torch >= 2.4
TORCH_ALLOW_LISTS_TYPES = hasattr(torch.serialization, 'add_safe_globals')
#: ``torch.load`` reads weights only unless told otherwise, torch >= 2.6
TORCH_LOADS_WEIGHTS_ONLY_BY_DEFAULT = torch.__version__ >= '2.6'


def _numpy_globals() -> dict[str, Any]:
    """The numpy objects mmengine checkpoints hold (arrays, scalars, dtypes), under every name numpy 1.x and 2.x
    pickle them by (``numpy.core`` became ``numpy._core`` in 2.0; each reads the other's files)."""
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray
    found: dict[str, Any] = {'numpy.ndarray': np.ndarray, 'numpy.dtype': np.dtype}
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        found[f'{module}._reconstruct'] = multiarray._reconstruct
        found[f'{module}.scalar'] = multiarray.scalar
    dtype_classes = getattr(np, 'dtypes', None)
    if dtype_classes is not None:  # numpy >= 1.25 pickles dtypes by their class
        found.update({f'numpy.dtypes.{name}': getattr(dtype_classes, name) for name in dir(dtype_classes)
                      if name.endswith('DType')})
    return found


def _safe_types() -> list[Any]:
    """What evit_mm adds to torch's allow-list: mmengine's message hub buffer and numpy's objects."""
    return [HistoryBuffer, *dict.fromkeys(_numpy_globals().values())]


def _history_buffer_state(self: HistoryBuffer) -> dict[str, Any]:
    """``HistoryBuffer`` state without the class-level statistics functions (see module docstring)."""
    state = dict(self.__dict__)
    state.pop('statistics_methods', None)
    return state


def _allowed_globals() -> dict[str, Any]:
    """Every global the unpickler for torch < 2.4 resolves: torch's own weights-only allow-list (tensors, storages,
    ``OrderedDict``), what torch >= 2.4 adds to it (``Counter``: mmengine's ``MultiStepLR`` keeps its milestones in
    one; ``torch.device``; every dtype, torch 2.1 lists ten), the plain containers pickle writes by name (protocol 2
    writes ``builtins`` as ``__builtin__``), and :func:`_safe_types`."""
    from torch import _weights_only_unpickler
    allowed = dict(_weights_only_unpickler._get_allowed_globals())
    allowed['collections.Counter'] = collections.Counter
    allowed['torch.device'] = torch.device
    allowed.update({str(dtype): dtype for dtype in vars(torch).values() if isinstance(dtype, torch.dtype)})
    for name in ('set', 'complex', 'bytearray'):  # what torch >= 2.4 allows of them
        allowed[f'builtins.{name}'] = allowed[f'__builtin__.{name}'] = getattr(builtins, name)
    allowed['_codecs.encode'] = codecs.encode  # protocol 2 writes bytes as encode(str, 'latin1')
    allowed.update(_numpy_globals())
    allowed['mmengine.logging.history_buffer.HistoryBuffer'] = HistoryBuffer
    return allowed


class _AllowListUnpickler(pickle.Unpickler):
    """A pickle unpickler that resolves the allow-listed globals only: nothing else can be imported, built or
    called (the Python documentation's "restricting globals"). For torch < 2.4, whose weights-only unpickler has no
    allow-list to extend."""

    _allowed: dict[str, Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if _AllowListUnpickler._allowed is None:
            _AllowListUnpickler._allowed = _allowed_globals()
        found = _AllowListUnpickler._allowed.get(f'{module}.{name}')
        if found is None:
            raise pickle.UnpicklingError(f'Weights only load failed. Unsupported global: GLOBAL {module}.{name} '
                                         '(not a tensor, container, numpy or mmengine checkpoint type)')
        return found


def _load_allow_listed(file: IO[bytes], **kwargs: Any) -> Any:
    return _AllowListUnpickler(file, **kwargs).load()


#: A ``pickle_module`` for ``torch.load``: torch subclasses its ``Unpickler`` and calls its ``load``
_ALLOW_LIST_PICKLE = types.ModuleType('evit_mm_allow_list_pickle')
_ALLOW_LIST_PICKLE.Unpickler = _AllowListUnpickler
_ALLOW_LIST_PICKLE.load = _load_allow_listed


def load_weights_only(file: str | os.PathLike | IO[bytes], map_location: Any = None) -> Any:
    """``torch.load`` of ``file`` that builds tensors, containers and the allow-listed types only, on every torch
    evit_mm supports: torch's weights-only loader where it takes the allow-list (torch >= 2.4), else
    :class:`_AllowListUnpickler`. Refusals raise ``pickle.UnpicklingError`` naming the global."""
    if TORCH_ALLOW_LISTS_TYPES:
        return torch.load(file, map_location=map_location, weights_only=True)
    return torch.load(file, map_location=map_location, weights_only=False, pickle_module=_ALLOW_LIST_PICKLE)


def _mmengine_local_loader() -> Callable[[str, Any], Any]:
    """mmengine's loader for local files (``load_from``, ``--resume``) with :func:`load_weights_only`."""

    def load_from_local(filename: str, map_location: Any = None) -> Any:
        filename = os.path.expanduser(filename)
        if not os.path.isfile(filename):
            raise FileNotFoundError(f'{filename} can not be found.')
        return load_weights_only(filename, map_location)

    return load_from_local


def install() -> None:
    """Allow-list mmengine's checkpoint types for weights-only loading; where ``torch.load`` unpickles anything by
    default (torch < 2.6), mmengine's loader for local files reads weights only too. Idempotent."""
    HistoryBuffer.__getstate__ = _history_buffer_state
    if TORCH_ALLOW_LISTS_TYPES:
        torch.serialization.add_safe_globals(_safe_types())
    if not TORCH_LOADS_WEIGHTS_ONLY_BY_DEFAULT:
        from mmengine.runner.checkpoint import CheckpointLoader
        CheckpointLoader.register_scheme(prefixes='', force=True)(_mmengine_local_loader())

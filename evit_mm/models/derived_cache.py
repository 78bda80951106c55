"""A value derived from some tensors (folded weights, gathered bias tables), kept until one of them changes."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

import torch

T = TypeVar('T')


class DerivedCache(Generic[T]):
    """One value computed from ``sources`` tensors and served again while none of them changed.

    The key holds each source's storage and version counter (in-place updates, ``load_state_dict``, ``.to()``
    all change one of them) and whether inference mode is on (a value made under it must not meet autograd later).
    Sources that are inference tensors have no version counter: the value is then computed on every call. Writes
    that bump no version counter (through ``.data``; fused optimizers such as ``AdamW(fused=True)``) are the
    owner's to handle, by calling :meth:`clear` on mode switches and while the sources train.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: T | None = None

    @property
    def empty(self) -> bool:
        return self._key is None

    def clear(self) -> None:
        self._key, self._value = None, None

    def get(self, sources: Sequence[torch.Tensor | None], compute: Callable[[], T], also: tuple = ()) -> T:
        """The cached value, or ``compute()`` (run without autograd) when a source, or a hashable in ``also`` (e.g.
        a BatchNorm's ``eps``), changed since it was cached."""
        if any(t is not None and t.is_inference() for t in sources):
            with torch.no_grad():
                return compute()
        key = (torch.is_inference_mode_enabled(), *also,
               *((t.data_ptr(), t._version) if t is not None else None for t in sources))
        if key != self._key:
            with torch.no_grad():
                self._value = compute()
            self._key = key
        return self._value

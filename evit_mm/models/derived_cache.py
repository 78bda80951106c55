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
    that bump no version counter are handled in two ways: :meth:`training` drops the value whenever a gradient can
    reach a source (fused optimizers such as ``AdamW(fused=True)`` update parameters in place without a bump, even
    in a model kept in eval mode), and the owner calls :meth:`clear` on mode switches (mmengine's EMA hook swaps
    weights through ``.data``, then switches the mode).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: T | None = None

    @property
    def empty(self) -> bool:
        return self._key is None

    def clear(self) -> None:
        self._key, self._value = None, None

    def training(self, sources: Sequence[torch.Tensor | None]) -> bool:
        """Whether autograd can reach one of ``sources`` in this call; if so, the value is dropped (the sources are
        training, and a fused optimizer may change them without a version bump) and the caller must not cache."""
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources):
            self.clear()
            return True
        return False

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

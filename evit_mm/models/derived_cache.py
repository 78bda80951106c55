"""A value derived from some tensors (folded weights, gathered bias tables), kept until one of them changes."""
from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

import torch

T = TypeVar('T')


class _Served(threading.local):
    """Per thread, ``values``: the list that :func:`retaining_served_values` collects into, if any (a class default,
    not ``getattr(local, name, None)``: a missing attribute costs 0.36 us on every cache hit)."""

    values: list | None = None


_served = _Served()


@contextlib.contextmanager
def retaining_served_values() -> Iterator[list]:
    """Collect every value any :class:`DerivedCache` serves inside the block into the yielded list.

    For a CUDA graph captured in the block (:mod:`evit_mm.deploy.cuda_graphs`): the graph reads those tensors at
    their addresses on every replay, while their caches may drop them later (another mode, new weights); holding
    them keeps their memory from being reused under the graph.
    """
    outer = _served.values
    _served.values = values = []
    try:
        yield values
    finally:
        _served.values = outer
        if outer is not None:
            outer.extend(values)


class DerivedCache(Generic[T]):
    """One value computed from ``sources`` tensors and served again while none of them changed.

    The key holds each source's identity, storage and version counter (in-place updates, ``load_state_dict``,
    ``.to()`` all change one of them; the identity, held by a weak reference, keeps a new tensor that the allocator
    put at a freed one's address with the same version from passing for it). The value is computed outside
    inference mode and without autograd, so one value serves calls in and out of inference mode.
    Sources that are inference tensors have no version counter: the value is then computed on every call. Writes
    that bump no version counter are handled in two ways: :meth:`training` drops the value whenever a gradient can
    reach a source (fused optimizers such as ``AdamW(fused=True)`` update parameters in place without a bump, even
    in a model kept in eval mode), and the owner calls :meth:`clear` on mode switches (mmengine's EMA hook swaps
    weights through ``.data``, then switches the mode).
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._value: T | None = None
        self._sources: tuple[weakref.ref | None, ...] = ()

    def __getstate__(self) -> dict:
        """Copies and pickles start empty: the value is derived (and may be a tensor that cannot be copied, such as
        oneDNN's packed weights)."""
        return {'_key': None, '_value': None, '_sources': ()}

    @property
    def empty(self) -> bool:
        return self._key is None

    def clear(self) -> None:
        self._key, self._value, self._sources = None, None, ()

    def training(self, sources: Sequence[torch.Tensor | None]) -> bool:
        """Whether autograd can reach one of ``sources`` in this call; if so, the value is dropped (the sources are
        training, and a fused optimizer may change them without a version bump) and the caller must not cache."""
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in sources):
            self.clear()
            return True
        return False

    def get(self, sources: Sequence[torch.Tensor | None], compute: Callable[[], T], also: tuple = ()) -> T:
        """The cached value, or ``compute()`` (run without autograd, outside inference mode) when a source, or a
        hashable in ``also`` (e.g. a BatchNorm's ``eps``), changed since it was cached."""
        # plain loops, no generators: this runs for every deployed layer on every call, on the host a GPU waits for
        # at batch 1 (2.1 -> 0.8 us for one source)
        key = also
        for t in sources:
            if t is None:
                key += (None,)
            elif t.is_inference():
                with torch.no_grad():
                    return compute()
            else:
                key += (t.data_ptr(), t._version)
        if key != self._key or not self._same_sources(sources):
            # never an inference tensor, even when called under inference mode: a cache keyed on this value (the
            # packed copy of a folded weight) could otherwise not keep its own (inference tensors have no version)
            with torch.inference_mode(False), torch.no_grad():
                self._value = compute()
            self._key = key
            self._sources = tuple(None if t is None else weakref.ref(t) for t in sources)
        retained = _served.values
        if retained is not None:
            retained.append(self._value)
        return self._value

    def _same_sources(self, sources: Sequence[torch.Tensor | None]) -> bool:
        if len(sources) != len(self._sources):
            return False
        for t, ref in zip(sources, self._sources):
            if (ref is not None) if t is None else (ref is None or ref() is not t):
                return False
        return True

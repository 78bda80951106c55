"""DerivedCache: a value served again only while its source tensors are the same, unchanged tensors."""
import copy
import pickle

import torch

from evit_mm.models.derived_cache import DerivedCache, retaining_served_values


def counting_cache():
    calls = []
    cache = DerivedCache()

    def get(*sources):
        return cache.get(sources, lambda: calls.append(1) or len(calls))
    return cache, get, calls


def test_value_is_recomputed_when_a_source_changes():
    cache, get, calls = counting_cache()
    t = torch.ones(3)
    assert get(t) == get(t) == 1
    t.add_(1)  # in place: a version bump
    assert get(t) == 2
    t.data = torch.zeros(3)  # new storage behind the same tensor
    assert get(t) == 3
    assert len(calls) == 3


def test_another_tensor_at_the_same_address_is_another_source():
    """A view shares the storage (and version counter) of its base, as a new tensor the allocator placed at a freed
    one's address might: identity, not address alone, decides."""
    cache, get, calls = counting_cache()
    t = torch.ones(3)
    alias = t.view(3)
    assert alias.data_ptr() == t.data_ptr() and alias._version == t._version
    assert get(t) == 1
    assert get(alias) == 2
    assert get(alias) == 2


def test_copies_and_pickles_start_empty():
    cache, get, _ = counting_cache()
    get(torch.ones(3))
    assert not cache.empty
    assert copy.deepcopy(cache).empty
    assert pickle.loads(pickle.dumps(cache)).empty
    assert not cache.empty


def test_values_made_under_inference_mode_can_be_cached_on():
    """A value computed inside inference mode is an ordinary tensor, so that another cache can key on it (the
    packed copy of a folded weight): inference tensors have no version counter and are recomputed every call."""
    cache = DerivedCache()
    source = torch.ones(3)
    with torch.inference_mode():
        value = cache.get((source,), lambda: source * 2)
        assert not value.is_inference()
        assert cache.get((source,), lambda: source * 3) is value
    assert not value.requires_grad
    assert cache.get((source,), lambda: source * 3) is value  # the same value serves outside inference mode


def test_served_values_are_retained_inside_the_block_only():
    cache, get, _ = counting_cache()
    t = torch.ones(3)
    get(t)
    with retaining_served_values() as outer:
        get(t)  # a cached value
        with retaining_served_values() as inner:
            get(torch.zeros(2))  # a computed one
        assert inner == [2]
    get(t)
    assert outer == [1, 2]  # the inner block's values also reach the outer one; nothing after the block

"""RepeatAugSampler: timm's repeated augmentation under mmengine's seeding."""
from __future__ import annotations

from evit_mm.engine.samplers import RepeatAugSampler


def _order(seed: int | None, epoch: int = 0) -> list[int]:
    sampler = RepeatAugSampler(list(range(40)), num_repeats=3, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_follows_the_seed_and_the_epoch():
    assert _order(0) == _order(0)  # reproducible
    assert _order(0) != _order(1)  # the run's seed matters (timm's sampler alone ignored it)
    assert _order(0, epoch=1) != _order(0, epoch=0)  # each epoch reshuffles
    assert len(_order(None)) == 40  # no seed: a random one, still one epoch's worth of samples


def test_each_image_appears_repeated_within_an_epoch():
    order = _order(3)
    assert len(order) == 40 and len(set(order)) < 40  # about len(dataset) samples, copies among them
    assert all(order.count(index) <= 3 for index in set(order))

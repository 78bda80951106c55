"""Repeated augmentation (Hoffer et al., 2020; used by DeiT and the official EfficientViT recipe)."""
from __future__ import annotations

from mmengine.dist import get_dist_info, sync_random_seed
from mmengine.registry import DATA_SAMPLERS
from timm.data.distributed_sampler import RepeatAugSampler as _TimmRepeatAugSampler


@DATA_SAMPLERS.register_module()
class RepeatAugSampler(_TimmRepeatAugSampler):
    """timm's repeated-augmentation sampler, usable from mmengine configs with or without torch.distributed.

    Each image appears ``num_repeats`` times per epoch (spread over ranks, each copy augmented differently);
    an epoch still yields about ``len(dataset)`` samples in all. The order follows ``seed + epoch``, as mmengine's
    ``DefaultSampler`` does: mmengine passes the run's ``randomness.seed`` (None: one random seed shared by the
    ranks) and calls ``set_epoch`` (``DistSamplerSeedHook``); timm's sampler alone seeds by the epoch only, so
    every run would see the same order whatever its seed.
    """

    def __init__(self, dataset, shuffle: bool = True, num_repeats: int = 3, seed: int | None = None) -> None:
        rank, world_size = get_dist_info()
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, num_repeats=num_repeats)
        self.seed = sync_random_seed() if seed is None else seed
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Shuffle epoch ``epoch`` by ``seed + epoch`` (timm's ``__iter__`` seeds its generator with ``self.epoch``)."""
        super().set_epoch(self.seed + epoch)

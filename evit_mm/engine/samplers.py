"""Repeated augmentation (Hoffer et al., 2020; used by DeiT and the official EfficientViT recipe)."""
from __future__ import annotations

from mmengine.dist import get_dist_info
from mmengine.registry import DATA_SAMPLERS
from timm.data.distributed_sampler import RepeatAugSampler as _TimmRepeatAugSampler


@DATA_SAMPLERS.register_module()
class RepeatAugSampler(_TimmRepeatAugSampler):
    """timm's repeated-augmentation sampler, usable from mmengine configs with or without torch.distributed.

    Each image appears ``num_repeats`` times per epoch (spread over ranks, each copy augmented differently);
    an epoch still yields about ``len(dataset)`` samples in all. mmengine passes ``seed``; timm seeds by epoch
    through ``set_epoch`` (called by mmengine's ``DistSamplerSeedHook``).
    """

    def __init__(self, dataset, shuffle: bool = True, num_repeats: int = 3, seed: int | None = None) -> None:
        rank, world_size = get_dist_info()
        super().__init__(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, num_repeats=num_repeats)

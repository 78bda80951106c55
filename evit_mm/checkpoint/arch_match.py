"""Which EfficientViT variant a checkpoint's backbone weights belong to, read from their names and shapes."""
from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache

import torch

from .convert import to_backbone_state_dict
from .errors import CheckpointMismatchError

# Keys whose shape says nothing about the variant: bias tables depend on the window, and BN counters may be absent.
_IGNORED_SUFFIXES = ('attention_biases', 'num_batches_tracked')


def _signature_shape(shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
    """A 1x1 conv weight and the same matrix stored 2-D (older checkpoints) compare equal, as loading allows."""
    shape = tuple(shape)
    return shape[:2] if len(shape) == 4 and shape[2:] == (1, 1) else shape


@lru_cache(maxsize=None)
def _arch_signature(name: str) -> frozenset[tuple[str, tuple[int, ...]]]:
    from ..models import EfficientViT
    with torch.device('meta'):  # shapes only: no memory, no initialisation cost
        state_dict = EfficientViT(name).state_dict()
    return frozenset((key, _signature_shape(value.shape)) for key, value in state_dict.items()
                     if not key.endswith(_IGNORED_SUFFIXES))


def matching_archs(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the variants in the arch table whose every backbone weight the checkpoint holds, shape included.

    Args:
        state_dict: Backbone weights with evit_mm/timm key names
            (:func:`~evit_mm.checkpoint.convert.to_backbone_state_dict`); extra keys are allowed.

    Returns:
        The matching arch names (``'m0'`` ... ``'m5'``), usually one; empty for a custom variant or a damaged file.
    """
    from ..models.backbones.efficientvit import ARCH_SETTINGS
    available = {(key, _signature_shape(value.shape)) for key, value in state_dict.items()}
    return [name for name in ARCH_SETTINGS if _arch_signature(name) <= available]


def other_arch(checkpoint: Mapping[str, object], model_arch: object) -> str | None:
    """The variant whose backbone weights a checkpoint holds (official, timm or evit_mm layout, a whole detector or
    segmentor included) where it is not ``model_arch`` (an :class:`ArchSpec`), or None: the same variant, not an
    EfficientViT checkpoint, or a custom one. What an error about a checkpoint that does not fit names as the fix."""
    from ..models.backbones.efficientvit import ARCH_SETTINGS
    try:
        archs = matching_archs(to_backbone_state_dict(checkpoint))
    except CheckpointMismatchError:
        return None
    return archs[0] if archs and ARCH_SETTINGS[archs[0]] != model_arch else None

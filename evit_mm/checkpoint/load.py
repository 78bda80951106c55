"""Loading converted checkpoints into an EfficientViT model, strictly, with shape adaptation."""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch
from mmengine.logging import print_log
from torch import nn

from .arch_match import other_arch
from .convert import resize_attention_biases, to_backbone_state_dict
from .errors import CheckpointMismatchError
from .io import read_checkpoint

# Buffers whose absence from a checkpoint is harmless (older BN checkpoints lack the counter).
_OPTIONAL_SUFFIXES = ('num_batches_tracked',)


def pretrained_checkpoint(init_cfg: object, keys: tuple[str, ...] = ('prefix', 'map_location')) -> dict | None:
    """The arguments of ``init_cfg=dict(type='Pretrained', checkpoint=..., ...)``, or None for any other init_cfg.

    ``keys``: the optional keys the caller acts on or may ignore (the weights are always read to the CPU).

    Raises:
        ValueError: If ``checkpoint`` is missing or another key is given (``chekpoint=``, ``strict=``): mmengine's
            own initialiser would take neither, and a loader that ignored them would do so silently.
    """
    if not (isinstance(init_cfg, Mapping) and init_cfg.get('type') == 'Pretrained'):
        return None
    if 'checkpoint' not in init_cfg or set(init_cfg) - {'type', 'checkpoint', *keys}:
        raise ValueError(f"init_cfg=dict(type='Pretrained', ...) takes checkpoint (required), {' and '.join(keys)}; "
                         f'got keys {sorted(init_cfg)}')
    return {key: value for key, value in init_cfg.items() if key != 'type'}


def _list(keys: list[str], limit: int = 12) -> str:
    shown = ', '.join(keys[:limit])
    return shown + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def adapt_state_dict(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor],
                     adapt_shapes: bool = True) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Match ``source`` tensors to the ``target`` state dict's keys and shapes.

    With ``adapt_shapes``, attention-bias tables trained with another window are resized bicubically and 2-D
    weights are reshaped where the target has 1x1 convolutions. Anything else that is missing or mis-shaped
    raises.

    Returns:
        The adapted state dict (target keys only) and the sorted list of unused source keys.

    Raises:
        CheckpointMismatchError: Listing missing keys and shape mismatches.
    """
    adapted: dict[str, torch.Tensor] = {}
    missing, mismatched = [], []
    for key, expected in target.items():
        if key not in source:
            if not key.endswith(_OPTIONAL_SUFFIXES):
                missing.append(key)
            continue
        value = source[key]
        if value.shape != expected.shape:
            if not adapt_shapes:
                mismatched.append(f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected.shape)}')
                continue
            if key.endswith('attention_biases') and value.dim() == 2 and value.shape[0] == expected.shape[0]:
                value = resize_attention_biases(value, round(expected.shape[1] ** 0.5))
            elif value.dim() == 2 and expected.dim() == 4 and expected.shape[2:] == (1, 1) \
                    and value.shape == expected.shape[:2]:
                value = value[:, :, None, None]
            else:
                mismatched.append(f'{key}: checkpoint {tuple(value.shape)} vs model {tuple(expected.shape)}')
                continue
        adapted[key] = value
    if missing or mismatched:
        parts = []
        if missing:
            parts.append(f'{len(missing)} missing keys: {_list(missing)}')
        if mismatched:
            parts.append(f'{len(mismatched)} shape mismatches: {_list(mismatched, 6)}')
        raise CheckpointMismatchError(
            f'checkpoint does not fit the model ({len(target)} weights; another arch or task?): ' + '; '.join(parts))
    unused = sorted(set(source) - set(target))
    return adapted, unused


def load_pretrained(model: nn.Module, checkpoint: str | os.PathLike, prefix: str | None = None,
                    map_location: str = 'cpu') -> list[str]:
    """Load an official, timm or evit_mm checkpoint into an EfficientViT backbone, all weights or none.

    Args:
        model: The backbone.
        checkpoint: Local path (``.pth``, ``.safetensors``) or URL.
        prefix: Key prefix of the backbone inside the checkpoint; found automatically when None.
        map_location: Where tensors are loaded. Defaults to ``'cpu'``.

    Returns:
        Checkpoint keys that the backbone did not use (also logged).

    Raises:
        CheckpointMismatchError: If a backbone weight is missing or has an unusable shape; nothing is loaded.
    """
    state_dict = to_backbone_state_dict(read_checkpoint(checkpoint, map_location), prefix=prefix)
    return load_backbone_state_dict(model, state_dict, os.fspath(checkpoint))


def load_backbone_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> list[str]:
    """Load backbone weights with evit_mm/timm key names (:func:`~evit_mm.checkpoint.convert.to_backbone_state_dict`)
    into ``model``, all or none; ``source`` names them in the log and errors.

    Returns:
        Keys of ``state_dict`` that the backbone did not use (also logged).

    Raises:
        CheckpointMismatchError: If a backbone weight is missing or has an unusable shape, naming the arch whose
            weights the checkpoint holds when it is another variant of the arch table.
    """
    try:
        adapted, unused = adapt_state_dict(model.state_dict(), state_dict)
    except CheckpointMismatchError as error:
        arch = other_arch(state_dict, getattr(model, 'arch', None))
        if arch:  # the usual cause: a config's arch and its checkpoint disagree
            raise CheckpointMismatchError(f'{source}: {error}; the checkpoint holds the weights of arch {arch!r}, '
                                          f'set arch={arch!r}') from None
        raise CheckpointMismatchError(f'{source}: {error}') from None
    model.load_state_dict(adapted, strict=False)
    print_log(f'{type(model).__name__}: loaded {len(adapted)} tensors from {source}', logger='current')
    if unused:
        print_log(f'{type(model).__name__}: {len(unused)} checkpoint keys unused: {_list(unused)}',
                  logger='current', level=logging.WARNING)
    return unused

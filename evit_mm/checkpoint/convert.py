"""Conversion of EfficientViT checkpoints (official, timm, evit_mm) to evit_mm's backbone state dict.

evit_mm's parameter names are timm's (``patch_embed.conv1.conv``, ``stages.N.downsample.res1``,
``stages.N.blocks.M.mixer.m.attn``), so a timm state dict needs no renaming; official checkpoints
(``{'model': ...}`` with ``blocks1``/``blocks2``/``blocks3``) are renamed here.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .errors import CheckpointMismatchError

# Keys of classification heads (official ``head``/``head_dist``, timm ``head``), dropped for a backbone.
_HEAD_PREFIXES = ('head.', 'head_dist.')
_BLOCKS_KEY = re.compile(r'^blocks(\d+)\.(\d+)\.(.*)$')
_PATCH_EMBED_KEY = re.compile(r'^patch_embed\.(\d+)\.(.*)$')
_OFFICIAL_SHORT_NAMES = {'c': 'conv', 'l': 'linear'}
_DOWNSAMPLE_PARTS = ('res1', 'patchmerge', 'res2')  # official blocks{i}.0 / .1 / .2 for i >= 2


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Return the tensor mapping inside a checkpoint: ``{'model': ...}`` (official), ``{'state_dict': ...}``
    (mmengine/evit_mm), ``{'state_dict_ema': ...}`` is not taken implicitly; a bare state dict as is.

    Raises:
        ValueError: If no mapping of tensors is found.
    """
    for key in ('state_dict', 'model', 'module'):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f'no tensors found in the checkpoint; top-level keys: {sorted(checkpoint)[:20]}')
    return tensors


def detect_format(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Name the layout of ``state_dict``: ``'official'``, ``'timm'`` (= evit_mm backbone) or ``'unknown'``."""
    keys = list(state_dict)
    if any(_BLOCKS_KEY.match(k) for k in keys) or any(_PATCH_EMBED_KEY.match(k) for k in keys):
        return 'official'
    if any(k.startswith('stages.') for k in keys) and any(k.startswith('patch_embed.conv') for k in keys):
        return 'timm'
    return 'unknown'


def official_key_to_timm(key: str) -> str:
    match = _PATCH_EMBED_KEY.match(key)
    if match:  # Sequential(conv, relu, conv, relu, ...): convs at 0, 2, 4, 6
        index, rest = int(match.group(1)), match.group(2)
        key = f'patch_embed.conv{index // 2 + 1}.{rest}'
    match = _BLOCKS_KEY.match(key)
    if match:
        stage, index, rest = int(match.group(1)) - 1, int(match.group(2)), match.group(3)
        if stage > 0 and index < len(_DOWNSAMPLE_PARTS):
            key = f'stages.{stage}.downsample.{_DOWNSAMPLE_PARTS[index]}.{rest}'
        else:
            block = index - len(_DOWNSAMPLE_PARTS) if stage > 0 else index
            key = f'stages.{stage}.blocks.{block}.{rest}'
    return '.'.join(_OFFICIAL_SHORT_NAMES.get(part, part) for part in key.split('.'))


def rename_official_backbone_keys(state_dict: dict[str, Any], prefix: str) -> bool:
    """Rename, in place, the official-layout EfficientViT keys under ``prefix`` (``'backbone.'`` in an official
    downstream detector checkpoint, ``''`` for a backbone alone) to evit_mm's names, dropping the official
    ``attention_bias_idxs`` buffers; keys elsewhere are left alone. Returns whether there were any to rename.

    What lets a whole official detector checkpoint (RetinaNet or Mask R-CNN from the official downstream code, an
    mmdet 2.x file whose neck and head names are mmdet 3.x's) load into an evit_mm detector.
    """
    own = {key[len(prefix):]: key for key in state_dict if key.startswith(prefix)}
    if detect_format(dict.fromkeys(own)) != 'official':
        return False
    for short, key in own.items():
        value = state_dict.pop(key)
        if not short.endswith('attention_bias_idxs'):
            state_dict[prefix + official_key_to_timm(short)] = value
    return True


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keep the keys that start with ``prefix`` (e.g. ``'backbone.'``), without it."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def to_timm_state_dict(checkpoint: Mapping[str, Any], prefix: str | None = None,
                       keep_heads: bool = False) -> dict[str, torch.Tensor]:
    """Turn any supported checkpoint into timm's (= evit_mm's) key names.

    Handles official (``{'model': ...}``), timm, and evit_mm checkpoints: a backbone, a classifier, or a
    detector/segmentor whose backbone keys start with ``backbone.`` (found automatically; ``prefix``
    forces one). ``module.`` (DataParallel) is stripped and ``attention_bias_idxs`` buffers are dropped;
    classification heads (``head.``, ``head_dist.``) are dropped unless ``keep_heads``.

    Raises:
        CheckpointMismatchError: If the checkpoint is not an EfficientViT checkpoint, naming what was found.
    """
    state_dict = unwrap_state_dict(checkpoint)
    if all(k.startswith('module.') for k in state_dict):
        state_dict = strip_prefix(state_dict, 'module.')
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        stripped = strip_prefix(state_dict, prefix)
        if not stripped:
            raise CheckpointMismatchError(f'no checkpoint key starts with prefix {prefix!r}; '
                                          f'first keys: {sorted(state_dict)[:5]}')
        state_dict = stripped
    layout = detect_format(state_dict)
    if layout == 'unknown':
        raise CheckpointMismatchError('not an EfficientViT (MSRA) checkpoint: expected official keys (blocks1., '
                                      'patch_embed.0.) or timm/evit_mm keys (stages., patch_embed.conv1.); '
                                      f'first keys: {sorted(state_dict)[:5]}')
    if layout == 'official':
        state_dict = {official_key_to_timm(k): v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items()
            if (keep_heads or not k.startswith(_HEAD_PREFIXES)) and not k.endswith('attention_bias_idxs')}


def to_backbone_state_dict(checkpoint: Mapping[str, Any], prefix: str | None = None) -> dict[str, torch.Tensor]:
    """:func:`to_timm_state_dict` without the classification heads: the backbone's weights."""
    return to_timm_state_dict(checkpoint, prefix)


def resize_attention_biases(table: torch.Tensor, window_size: int) -> torch.Tensor:
    """Resize a ``(num_heads, R * R)`` bias table to ``window_size ** 2`` columns.

    Bicubic, ``align_corners=False``, over the ``(|dy|, |dx|)`` grid, as the official downstream loader does
    (and as timm does when upsampling); the golden data checks this choice (``align_corners=True`` is off
    by up to 6e-3).
    """
    heads, entries = table.shape
    side = round(entries ** 0.5)
    if side * side != entries:
        raise ValueError(f'attention bias table with {entries} columns is not a square window')
    if side == window_size:
        return table
    grid = table.float().reshape(1, heads, side, side)
    resized = F.interpolate(grid, size=(window_size, window_size), mode='bicubic', align_corners=False)
    return resized.reshape(heads, window_size * window_size).to(table.dtype)

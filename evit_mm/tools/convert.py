"""Checkpoint conversion behind ``tools/convert_checkpoint.py``."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from ..checkpoint import load_pretrained
from ..models import EfficientViT


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, arch: str = 'm4',
                       window_size: int | Sequence[int] = 7, prefix: str | None = None) -> int:
    """Load ``src`` into an ``EfficientViT(arch, window_size)`` (validating every key and shape) and write its
    state dict to ``dst`` (``.safetensors`` or a torch file holding ``{'state_dict': ...}``).

    Returns:
        The number of tensors written.
    """
    model = EfficientViT(arch, window_size=window_size)
    load_pretrained(model, src, prefix=prefix)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    dst = os.fspath(dst)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(state_dict, dst, metadata={'arch': str(arch), 'format': 'evit_mm-backbone'})
    else:
        torch.save({'state_dict': state_dict, 'meta': {'arch': str(arch), 'format': 'evit_mm-backbone'}}, dst)
    return len(state_dict)

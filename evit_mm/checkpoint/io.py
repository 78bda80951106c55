"""Reading checkpoint files safely: ``weights_only=True`` for torch pickles, safetensors otherwise."""
from __future__ import annotations

import os
from typing import Any

import torch


def is_url(path: str) -> bool:
    return path.startswith(('http://', 'https://'))


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """Read a checkpoint from a local file (``.pth``/``.pt``/``.bin`` or ``.safetensors``) or a URL.

    Torch pickles are read with ``weights_only=True``: a file that holds arbitrary Python objects is refused
    rather than executed. URLs go through torch.hub's cache (downloaded once, hash-checked by name).

    Raises:
        FileNotFoundError: If a local path does not exist.
    """
    path = os.fspath(path)
    if is_url(path):
        return torch.hub.load_state_dict_from_url(path, map_location=map_location, weights_only=True,
                                                  check_hash=False, progress=False)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path!r} (give a local .pth/.safetensors file or a URL)')
    if path.endswith('.safetensors'):
        from safetensors.torch import load_file
        return load_file(path, device=str(map_location))
    return torch.load(path, map_location=map_location, weights_only=True)

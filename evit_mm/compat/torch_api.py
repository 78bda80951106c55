"""The torch functions evit_mm calls whose current form is newer than its oldest supported torch, 2.1 (the newest
torch with prebuilt mmcv 2.1.0 wheels, and so what an OpenMMLab environment installed with ``mim`` runs).

Where the installed torch has the current function, the name here is that function itself: no wrapper on the hot
paths (every deployed layer asks for autocast's state), and dynamo sees torch's own function under
``torch.compile``. Older torch gets the equivalent from the functions it has.
"""
from __future__ import annotations

import torch

__all__ = ['get_autocast_dtype', 'is_autocast_enabled', 'is_compiling']

if hasattr(torch, 'get_autocast_dtype'):  # torch >= 2.4: one function per question, taking the device type
    is_autocast_enabled = torch.is_autocast_enabled
    get_autocast_dtype = torch.get_autocast_dtype
else:
    def is_autocast_enabled(device_type: str) -> bool:
        """Whether autocast is on for ``device_type`` ('cpu' or 'cuda')."""
        return torch.is_autocast_cpu_enabled() if device_type == 'cpu' else torch.is_autocast_enabled()

    def get_autocast_dtype(device_type: str) -> torch.dtype:
        """The dtype autocast computes in on ``device_type`` ('cpu' or 'cuda')."""
        return torch.get_autocast_cpu_dtype() if device_type == 'cpu' else torch.get_autocast_gpu_dtype()

if hasattr(torch.compiler, 'is_compiling'):  # torch >= 2.3
    is_compiling = torch.compiler.is_compiling
else:
    from torch._dynamo import is_compiling  # noqa: F401  (torch 2.1-2.2: the same function, not yet public)

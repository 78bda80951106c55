"""Zero padding into NHWC memory, for the CPU kernels that read tiles or patches straight from a padded map."""
from __future__ import annotations

import torch


def zero_padded_nhwc(x: torch.Tensor, top: int, bottom: int, left: int, right: int) -> torch.Tensor:
    """``x`` ``(N, C, H, W)``, any memory layout, as a contiguous NHWC tensor ``(N, top+H+bottom, left+W+right, C)``
    with zeros around it.

    Why not ``F.pad``: it fills the whole output with zeros and then copies ``x`` over it, two passes over the
    largest maps of a network; here only the border is zeroed, so the map is written once.
    """
    n, c, h, w = x.shape
    padded = x.new_empty(n, top + h + bottom, left + w + right, c)
    for border in (padded[:, :top], padded[:, top + h:], padded[:, top:top + h, :left],
                   padded[:, top:top + h, left + w:]):
        if border.numel():
            border.zero_()
    padded[:, top:top + h, left:left + w].copy_(x.permute(0, 2, 3, 1))
    return padded

"""timm's RandAugment ``PosterizeIncreasing`` at magnitude 10 keeps 0 bits; Pillow >= 13 refuses ``bits=0``
(``ValueError: bits must be between or equal to 1 and 8``) where older Pillow returned a black image. The
official recipe's ``rand-m9-mstd0.5-inc1`` reaches magnitude 10 in about 2% of draws, so training would crash.
This keeps the old, official behaviour (0 bits kept = black image) instead of changing the recipe."""
from __future__ import annotations

from PIL import Image, ImageOps
from timm.data import auto_augment


def _posterize(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # all bits dropped: zeros, as Pillow < 13 computed
    return ImageOps.posterize(img, bits_to_keep)


def install() -> None:
    for name, op in list(auto_augment.NAME_TO_OP.items()):
        if op is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize

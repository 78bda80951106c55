"""ImageNet-style folder dataset (``ROOT/<class>/*.JPEG``) with timm's training and evaluation transforms."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmengine.registry import DATASETS
from PIL import Image
from torch.utils.data import Dataset

IMAGE_EXTENSIONS = ('.jpeg', '.jpg', '.png', '.bmp', '.webp')


@DATASETS.register_module()
class ImageFolderDataset(Dataset):
    """Images in one sub-folder per class, classes sorted by name (the torchvision/timm convention).

    Args:
        data_root: Split folder, e.g. ``data/imagenet/train``.
        transform: Keyword arguments of ``timm.data.create_transform`` (``is_training``, ``auto_augment``, ...).
        classes: Expected class names; when given they must match the sub-folders exactly.

    Raises:
        FileNotFoundError: If ``data_root`` does not exist.
        ValueError: If it has no class folders, a class folder has no images, or ``classes`` differ.
    """

    def __init__(self, data_root: str | os.PathLike, transform: dict | None = None,
                 classes: list[str] | tuple[str, ...] | None = None) -> None:
        root = Path(data_root)
        if not root.is_dir():
            raise FileNotFoundError(f'dataset folder {str(root)!r} does not exist; expected the ImageNet layout '
                                    f'{root}/<class>/*.JPEG (e.g. data/imagenet/train/n01440764/...)')
        found = sorted(d.name for d in root.iterdir() if d.is_dir())
        if not found:
            raise ValueError(f'{root} has no class sub-folders; expected {root}/<class>/*.JPEG')
        if classes is not None and list(classes) != found:
            raise ValueError(f'{root} has classes {found[:5]}... ({len(found)}), the config expects '
                             f'{list(classes)[:5]}... ({len(classes)})')
        self.classes = found
        self.samples: list[tuple[str, int]] = []
        for index, name in enumerate(found):
            files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not files:
                raise ValueError(f'class folder {str(root / name)!r} has no images ({", ".join(IMAGE_EXTENSIONS)})')
            self.samples += [(str(p), index) for p in files]
        self.metainfo = dict(classes=tuple(found))
        from timm.data import create_transform

        from ..compat import timm_posterize
        timm_posterize.install()
        self.transform = create_transform(**(transform or {}))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        with Image.open(path) as image:
            inputs = self.transform(image.convert('RGB'))
        return dict(inputs=inputs, data_samples=label)

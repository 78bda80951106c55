"""A small classification dataset in the ImageNet folder layout (``ROOT/{train,val}/<class>/*.JPEG``): one
centred shape per image, the class is the shape; same generator family as the COCO and ADE20K demos."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .shapes import SHAPE_CLASSES, render_scene, write_once


def _write_split(root: Path, split: str, per_class: int, size: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(range(len(SHAPE_CLASSES)), 0)
    for name in SHAPE_CLASSES:
        (root / split / name).mkdir(parents=True, exist_ok=True)
    while min(counts.values()) < per_class:
        image, shapes = render_scene(rng, size, size, max_shapes=1, min_size=0.35, max_size=0.7)
        label = shapes[0].label
        if counts[label] >= per_class:
            continue
        counts[label] += 1
        path = root / split / SHAPE_CLASSES[label] / f'{split}_{label}_{counts[label]:05d}.JPEG'
        cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])


def make_imagenet_demo(root: str | os.PathLike, train_per_class: int = 60, val_per_class: int = 15,
                       size: int = 96, seed: int = 0) -> Path:
    """Write the demo dataset under ``root`` unless a complete one with the same parameters is there."""
    params = dict(train=train_per_class, val=val_per_class, size=size, seed=seed, version=1)

    def write(root: Path) -> None:
        _write_split(root, 'train', train_per_class, size, seed)
        _write_split(root, 'val', val_per_class, size, seed + 1)

    return write_once(root, params, write)

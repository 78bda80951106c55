"""A small semantic-segmentation dataset of coloured shapes in the ADE20K layout, generated in seconds.

Layout (what mmseg's ADE20K configs read, with ``reduce_zero_label=True``)::

    ROOT/images/training/ADE_train_00000001.jpg     ROOT/annotations/training/ADE_train_00000001.png
    ROOT/images/validation/ADE_val_00000001.jpg     ROOT/annotations/validation/ADE_val_00000001.png

Annotation values: 0 = unlabelled (ignored after ``reduce_zero_label``), 1 = background, 2.. = the shapes, so
the classes after reduction are :data:`DEMO_SEG_CLASSES`.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from .shapes import SHAPE_CLASSES, rasterize, render_scene, write_once

DEMO_SEG_CLASSES = ('background', *SHAPE_CLASSES)


def _write_split(root: Path, split: str, prefix: str, count: int, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    images, labels = root / 'images' / split, root / 'annotations' / split
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for index in range(1, count + 1):
        image, shapes = render_scene(rng, *size)
        seg = rasterize(shapes, *size) + 1  # 1 = background, 2.. = shapes; 0 stays unused (ignored)
        name = f'{prefix}_{index:08d}'
        cv2.imwrite(str(images / f'{name}.jpg'), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cv2.imwrite(str(labels / f'{name}.png'), seg)


def make_ade20k_demo(root: str | os.PathLike, num_train: int = 200, num_val: int = 40,
                     size: tuple[int, int] = (192, 256), seed: int = 0) -> Path:
    """Write the demo dataset under ``root`` unless a complete one with the same parameters is there."""
    params = dict(num_train=num_train, num_val=num_val, size=list(size), seed=seed, version=1)

    def write(root: Path) -> None:
        _write_split(root, 'training', 'ADE_train', num_train, size, seed)
        _write_split(root, 'validation', 'ADE_val', num_val, size, seed + 1)

    return write_once(root, params, write)

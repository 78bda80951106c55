"""A small COCO-format detection/instance-segmentation dataset of coloured shapes, generated in seconds.

Layout (the standard one mmdet's COCO configs read)::

    ROOT/annotations/instances_train2017.json
    ROOT/annotations/instances_val2017.json
    ROOT/train2017/000000000001.png ...
    ROOT/val2017/...
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np

from .shapes import SHAPE_CLASSES, render_scene, write_once


def _write_split(root: Path, split: str, count: int, size: tuple[int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    height, width = size
    (root / f'{split}2017').mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, count + 1):
        image, shapes = render_scene(rng, height, width)
        name = f'{image_id:012d}.png'
        cv2.imwrite(str(root / f'{split}2017' / name), image)
        images.append(dict(id=image_id, file_name=name, height=height, width=width))
        for shape in shapes:
            poly = shape.polygon
            area = float(cv2.contourArea(poly))
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=shape.label + 1,
                bbox=[round(v, 2) for v in shape.bbox_xywh], area=round(area, 2), iscrowd=0,
                segmentation=[[round(float(v), 2) for v in poly.reshape(-1)]]))
    categories = [dict(id=i + 1, name=name, supercategory='shape') for i, name in enumerate(SHAPE_CLASSES)]
    (root / 'annotations').mkdir(parents=True, exist_ok=True)
    with open(root / 'annotations' / f'instances_{split}2017.json', 'w') as f:
        json.dump(dict(images=images, annotations=annotations, categories=categories,
                       info=dict(description='evit_mm synthetic shapes demo'), licenses=[]), f)


def make_coco_demo(root: str | os.PathLike, num_train: int = 400, num_val: int = 60,
                   size: tuple[int, int] = (256, 256), seed: int = 0) -> Path:
    """Write the demo dataset under ``root`` unless a complete one with the same parameters is there.

    Returns:
        ``root`` as a Path.
    """
    params = dict(num_train=num_train, num_val=num_val, size=list(size), seed=seed, version=1)

    def write(root: Path) -> None:
        _write_split(root, 'train', num_train, size, seed)
        _write_split(root, 'val', num_val, size, seed + 1)

    return write_once(root, params, write)

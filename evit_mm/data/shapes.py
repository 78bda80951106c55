"""Deterministic synthetic scenes of coloured shapes: the base of every demo dataset (COCO, ADE20K, ImageNet
layouts). Each shape is a polygon, so boxes, instance masks and semantic maps agree exactly."""
from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: Shape classes; their hue ranges overlap only partly, so shape matters as much as colour.
SHAPE_CLASSES = ('circle', 'square', 'triangle', 'star')
_BASE_HUES = (0, 50, 100, 140)  # OpenCV hue (0-180) per class


@dataclass
class Shape:
    label: int  # index into SHAPE_CLASSES
    polygon: np.ndarray  # (K, 2) float32 x, y

    @property
    def bbox_xywh(self) -> list[float]:
        x0, y0 = self.polygon.min(0)
        x1, y1 = self.polygon.max(0)
        return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _polygon(label: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    if label == 0:  # circle
        t = np.linspace(0, 2 * np.pi, 32, endpoint=False)
        radii = np.full_like(t, r)
    elif label == 1:  # square
        t = np.linspace(0, 2 * np.pi, 4, endpoint=False) + angle
        radii = np.full_like(t, r)
    elif label == 2:  # triangle
        t = np.linspace(0, 2 * np.pi, 3, endpoint=False) + angle
        radii = np.full_like(t, r * 1.15)
    else:  # five-pointed star
        t = np.linspace(0, 2 * np.pi, 10, endpoint=False) + angle
        radii = np.where(np.arange(10) % 2 == 0, r * 1.1, r * 0.5)
    return np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1).astype(np.float32)


def _colour(rng: np.random.Generator, label: int) -> tuple[int, int, int]:
    hue = (_BASE_HUES[label] + rng.integers(-12, 13)) % 180
    hsv = np.uint8([[[hue, rng.integers(150, 256), rng.integers(150, 256)]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def render_scene(rng: np.random.Generator, height: int, width: int, max_shapes: int = 4,
                 min_size: float = 0.12, max_size: float = 0.3) -> tuple[np.ndarray, list[Shape]]:
    """Draw 1..max_shapes non-overlapping shapes on a noisy gradient background.

    Returns:
        A BGR ``uint8`` image and its shapes (drawn in order; none overlaps another's box).
    """
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(40, 120, size=3)
    tilt = rng.uniform(-0.15, 0.15, size=(2, 3))
    image = base + xx[..., None] * tilt[0] + yy[..., None] * tilt[1] + rng.normal(0, 8, (height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    shapes: list[Shape] = []
    side = min(height, width)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(20):
            label = int(rng.integers(len(SHAPE_CLASSES)))
            r = rng.uniform(min_size, max_size) * side / 2
            cx, cy = rng.uniform(r + 2, width - r - 2), rng.uniform(r + 2, height - r - 2)
            poly = _polygon(label, cx, cy, r, rng.uniform(0, np.pi))
            x0, y0 = poly.min(0)
            x1, y1 = poly.max(0)
            if x0 < 0 or y0 < 0 or x1 >= width or y1 >= height:
                continue
            if all(x1 < s.polygon[:, 0].min() - 2 or x0 > s.polygon[:, 0].max() + 2 or
                   y1 < s.polygon[:, 1].min() - 2 or y0 > s.polygon[:, 1].max() + 2 for s in shapes):
                cv2.fillPoly(image, [np.round(poly).astype(np.int32)], _colour(rng, label), lineType=cv2.LINE_8)
                shapes.append(Shape(label, poly))
                break
    return image, shapes


def rasterize(shapes: list[Shape], height: int, width: int) -> np.ndarray:
    """Semantic map: 0 = background, ``label + 1`` inside each shape (same rasterisation as the image)."""
    seg = np.zeros((height, width), np.uint8)
    for s in shapes:
        cv2.fillPoly(seg, [np.round(s.polygon).astype(np.int32)], s.label + 1, lineType=cv2.LINE_8)
    return seg


#: Written last into a demo dataset's folder: the folder is a complete dataset of the recorded parameters.
COMPLETE_MARKER = '.complete.json'


def write_once(root: str | os.PathLike, params: dict, write: Callable[[Path], None]) -> Path:
    """Run ``write(root)`` unless ``root`` already holds a complete dataset made with the same ``params``
    (so demos regenerate nothing on a second run, and a half-written folder is rewritten).

    Returns:
        ``root`` as a Path.
    """
    root = Path(root)
    marker = root / COMPLETE_MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    write(root)
    marker.write_text(json.dumps(params))
    return root

"""Synthetic inputs in the format each task's ``test_step`` and ``data_preprocessor`` expect."""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch


#: What each number of ``x``-joined sizes means, with an example, for :func:`parse_shape`'s errors.
SHAPE_FORMS = {2: 'HxW, e.g. 800x1333, or N for NxN', 3: 'BxHxW, e.g. 16x224x224',
               4: 'CINxCOUTxHxW (a convolution), e.g. 256x256x100x167'}


#: Input size (HxW) the tools use for a target when no ``--shape`` is given: what each task is measured at (COCO's
#: test scale, ADE20K's crop, ImageNet's), not one size for all (a detector timed at 224x224 says little).
DEFAULT_SHAPES: dict[str, tuple[int, int]] = {'detector': (800, 1333), 'segmentor': (512, 512),
                                              'classifier': (224, 224), 'backbone': (224, 224)}
DEFAULT_SHAPES_HELP = 'default: ' + ', '.join(f'{h}x{w} for {kind}s' for kind, (h, w) in DEFAULT_SHAPES.items())


def parse_shape(text: str, dims: int = 2) -> tuple[int, ...]:
    """``'800x1333'`` -> ``(800, 1333)``: ``dims`` positive integers joined by ``x`` (:data:`SHAPE_FORMS`); for an
    image size one integer is a square (``'512'`` -> ``(512, 512)``, as mmseg's and mmpretrain's tools read it)."""
    try:
        values = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        values = ()
    if dims == 2 and len(values) == 1:
        values *= 2
    if len(values) != dims or min(values) < 1:
        raise ValueError(f'shape must be {SHAPE_FORMS[dims]}, got {text!r}')
    return values


def shape_type(dims: int = 2) -> Callable[[str], tuple[int, ...]]:
    """:func:`parse_shape` as an argparse ``type``: a malformed shape ends in argparse's usage error, which names the
    expected form, instead of a traceback after the models were built."""
    def parse(text: str) -> tuple[int, ...]:
        try:
            return parse_shape(text, dims)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return parse


class _ImageShape(argparse.Action):
    """``--shape`` for tools that take one image size: ``800x1333``, ``800 1333`` (what mmseg's and mmpretrain's
    ``get_flops.py`` take) or ``512`` for a square, stored as ``(height, width)``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: list[str],
                 option_string: str | None = None) -> None:
        try:
            setattr(namespace, self.dest, parse_shape('x'.join(values)))
        except ValueError:
            parser.error(f"argument {option_string}: shape must be HxW, H W or N (NxN), e.g. 800x1333, 800 1333 "
                         f"or 512, got {' '.join(values)!r}")


def add_image_shape_option(parser: argparse.ArgumentParser, help: str) -> None:
    """Add ``--shape`` (one image size, :class:`_ImageShape`) to ``parser``; ``args.shape`` is ``None`` when not
    given."""
    parser.add_argument('--shape', nargs='+', action=_ImageShape, metavar='SIZE', help=help)


def device_type(text: str) -> str:
    """An argparse ``type`` for ``--device``: ``cpu``, ``cuda`` or ``cuda:N`` where that device exists, so that a
    machine without it gets a usage error naming what it has instead of a traceback from CUDA's initialisation."""
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in ('cpu', 'cuda'):
        raise argparse.ArgumentTypeError(f'choose cpu, cuda or cuda:N, got {text!r}')
    if device.type == 'cuda':
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f'{text!r}: this machine has no CUDA device (torch.cuda.is_available() '
                                             'is False); use cpu')
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f'{text!r}: this machine has {count} CUDA device(s), cuda:0 to '
                                             f'cuda:{count - 1}')
    return text


def count_type(minimum: int) -> Callable[[str], int]:
    """An argparse ``type`` for a count of at least ``minimum`` (threads, repeats, batch size: 1; warm-up calls: 0),
    so that e.g. ``--threads 0`` is a usage error instead of being taken for "not given"."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f'must be an integer of at least {minimum}, got {text!r}')
        return value
    return parse


def synthetic_batch(kind: str, batch: int, height: int, width: int, num_classes: int = 80,
                    ground_truth: bool = False, with_images: bool = True) -> dict:
    """A packed batch (before the data preprocessor) of random ``uint8`` images with test-time metadata; with
    ``ground_truth``, also what a training step's losses read: boxes, labels and masks of a few objects per image
    (detectors), a label map (segmentors), class labels (classifiers), all in ``[0, num_classes)``. Without
    ``with_images``, ``inputs`` is None: the samples alone, for a caller with its own images (no random numbers
    drawn, so that a JIT trace can run it: torch < 2.2's tracer takes no ``Generator``)."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
              for _ in range(batch)] if with_images else None
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1.0, 1.0), batch_input_shape=(height, width))
    if kind == 'detector':
        from mmdet.structures import DetDataSample
        samples = []
        for i in range(batch):
            sample = DetDataSample()
            sample.set_metainfo(dict(meta, img_id=i))
            if ground_truth:
                sample.gt_instances = _synthetic_objects(height, width, num_classes, generator)
            samples.append(sample)
        return dict(inputs=images, data_samples=samples)
    if kind == 'segmentor':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        samples = []
        for _ in range(batch):
            sample = SegDataSample()
            sample.set_metainfo(meta)
            if ground_truth:
                labels = torch.randint(0, num_classes, (1, height, width), generator=generator)
                sample.gt_sem_seg = PixelData(data=labels)
            samples.append(sample)
        return dict(inputs=images, data_samples=samples)
    if kind == 'classifier':
        labels = torch.randint(0, num_classes, (batch,), generator=generator).tolist()
        return dict(inputs=None if images is None else [img.float() for img in images], data_samples=labels)
    raise ValueError(f'no synthetic batch for {kind!r}')


#: Objects per image in a synthetic detection batch: a typical COCO image has about seven.
OBJECTS_PER_IMAGE = 7


def _synthetic_objects(height: int, width: int, num_classes: int, generator: torch.Generator):
    """Boxes of 1/8 to 1/2 of the image side inside it, their labels, and masks filling each box."""
    import numpy as np
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    n = OBJECTS_PER_IMAGE
    sizes = torch.rand(n, 2, generator=generator) * 0.375 + 0.125  # fraction of height, width
    corners = torch.rand(n, 2, generator=generator) * (1 - sizes)
    y1, x1 = corners[:, 0] * height, corners[:, 1] * width
    y2, x2 = y1 + sizes[:, 0] * height, x1 + sizes[:, 1] * width
    boxes = torch.stack([x1, y1, x2, y2], dim=1)
    masks = np.zeros((n, height, width), dtype=np.uint8)
    for mask, (left, top, right, bottom) in zip(masks, boxes.round().long().tolist()):
        mask[top:bottom, left:right] = 1
    return InstanceData(bboxes=boxes, labels=torch.randint(0, num_classes, (n,), generator=generator),
                        masks=BitmapMasks(masks, height, width))

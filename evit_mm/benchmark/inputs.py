"""Synthetic inputs in the format each task's ``test_step`` and ``data_preprocessor`` expect."""
from __future__ import annotations

import argparse
from collections.abc import Callable

import torch


#: What each number of ``x``-joined sizes means, with an example, for :func:`parse_shape`'s errors.
SHAPE_FORMS = {2: 'HxW, e.g. 800x1333', 3: 'BxHxW, e.g. 16x224x224',
               4: 'CINxCOUTxHxW (a convolution), e.g. 256x256x100x167'}


#: Input size (HxW) the tools use for a target when no ``--shape`` is given: what each task is measured at (COCO's
#: test scale, ADE20K's crop, ImageNet's), not one size for all (a detector timed at 224x224 says little).
DEFAULT_SHAPES: dict[str, tuple[int, int]] = {'detector': (800, 1333), 'segmentor': (512, 512),
                                              'classifier': (224, 224), 'backbone': (224, 224)}
DEFAULT_SHAPES_HELP = 'default: ' + ', '.join(f'{h}x{w} for {kind}s' for kind, (h, w) in DEFAULT_SHAPES.items())


def parse_shape(text: str, dims: int = 2) -> tuple[int, ...]:
    """``'800x1333'`` -> ``(800, 1333)``: ``dims`` positive integers joined by ``x`` (:data:`SHAPE_FORMS`)."""
    try:
        values = tuple(int(v) for v in text.lower().split('x'))
    except ValueError:
        values = ()
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


def synthetic_batch(kind: str, batch: int, height: int, width: int, num_classes: int = 80) -> dict:
    """A packed batch (before the data preprocessor) of random ``uint8`` images with test-time metadata."""
    generator = torch.Generator().manual_seed(0)
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
              for _ in range(batch)]
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                scale_factor=(1.0, 1.0), batch_input_shape=(height, width))
    if kind == 'detector':
        from mmdet.structures import DetDataSample
        samples = []
        for i in range(batch):
            sample = DetDataSample()
            sample.set_metainfo(dict(meta, img_id=i))
            samples.append(sample)
        return dict(inputs=images, data_samples=samples)
    if kind == 'segmentor':
        from mmseg.structures import SegDataSample
        samples = []
        for _ in range(batch):
            sample = SegDataSample()
            sample.set_metainfo(meta)
            samples.append(sample)
        return dict(inputs=images, data_samples=samples)
    if kind == 'classifier':
        return dict(inputs=[img.float() for img in images], data_samples=[0] * batch)
    raise ValueError(f'no synthetic batch for {kind!r}')

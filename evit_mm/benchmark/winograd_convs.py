"""Winograd F(2x2, 3x3) and F(4x4, 3x3) against the direct convolution, per convolution shape: time and float32
error, all candidates of a shape timed in the same interleaved rounds (``tools/benchmark_winograd.py``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models.winograd import WINOGRAD_POINTS, winograd_conv3x3, winograd_filter
from .timing import time_interleaved

#: The RetinaNet head's convolutions at 800x1333 (FPN levels P3-P7; 720 = 9 anchors x 80 classes).
RETINANET_HEAD_SHAPES = ((256, 256, 100, 167), (256, 720, 100, 167), (256, 256, 50, 84), (256, 256, 25, 42),
                         (256, 256, 13, 21), (256, 256, 7, 11))
DIRECT = 'direct'


@dataclass
class ConvRow:
    """One convolution shape: median milliseconds per call and largest error relative to the output's largest value
    (float32 against float64), per candidate."""

    shape: tuple[int, int, int, int]  # in channels, out channels, height, width
    ms: dict[str, float]
    error: dict[str, float]


def candidate_name(tile: int) -> str:
    return f'F({tile}x{tile},3x3)'


def compare_winograd(shapes: tuple[tuple[int, int, int, int], ...] = RETINANET_HEAD_SHAPES, warmup: int = 1,
                     repeats: int = 5) -> list[ConvRow]:
    """Time ``relu(conv3x3(x) + bias)`` on a channels-last batch-1 map by oneDNN's direct convolution and by each
    Winograd tile, and measure each one's float32 error against the float64 direct convolution."""
    rows = []
    generator = torch.Generator().manual_seed(0)
    for in_channels, out_channels, height, width in shapes:
        x = torch.randn(1, in_channels, height, width, generator=generator).relu()
        x = x.contiguous(memory_format=torch.channels_last)
        weight = torch.randn(out_channels, in_channels, 3, 3, generator=generator) * (2 / (9 * in_channels)) ** 0.5
        bias = torch.randn(out_channels, generator=generator) * 0.1
        direct_weight = weight.contiguous(memory_format=torch.channels_last)
        calls = {DIRECT: lambda: F.conv2d(x, direct_weight, bias, padding=1).relu_()}
        for tile in sorted(WINOGRAD_POINTS):
            filters = winograd_filter(weight, tile)
            calls[candidate_name(tile)] = lambda filters=filters: winograd_conv3x3(x, filters, bias, relu=True)
        with torch.inference_mode():
            expected = F.conv2d(x.double(), weight.double(), bias.double(), padding=1).relu_()
            scale = expected.abs().max()
            error = {name: ((call().double() - expected).abs().max() / scale).item() for name, call in calls.items()}
        timings = time_interleaved(calls, 1, warmup, repeats)
        rows.append(ConvRow((in_channels, out_channels, height, width),
                            {name: t.median * 1e3 for name, t in timings.items()}, error))
    return rows


def format_conv_rows(rows: list[ConvRow]) -> str:
    names = list(rows[0].ms)
    lines = ['| conv (in->out, HxW) | ' + ' | '.join(f'{n} ms' for n in names) + ' | '
             + ' | '.join(f'{n} error' for n in names) + ' |',
             '|---' * (1 + 2 * len(names)) + '|']
    for r in rows:
        cin, cout, h, w = r.shape
        lines.append(f'| {cin}->{cout}, {h}x{w} | ' + ' | '.join(f'{r.ms[n]:.2f}' for n in names) + ' | '
                     + ' | '.join(f'{r.error[n]:.1e}' for n in names) + ' |')
    return '\n'.join(lines)

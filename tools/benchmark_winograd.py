#!/usr/bin/env python
"""Winograd F(2x2, 3x3) and F(4x4, 3x3) against oneDNN's direct 3x3 convolution on the CPU: milliseconds per call
(medians of interleaved rounds) and float32 error relative to the output's largest value (against float64), per
convolution shape. Default shapes: the RetinaNet head's convolutions at 800x1333.

    python tools/benchmark_winograd.py --threads 2
    python tools/benchmark_winograd.py --threads 2 --shapes 256x256x128x128 512x512x32x32 --keep-freed-memory
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evit_mm.benchmark.allocator_option import add_allocator_argument, apply_allocator_argument  # noqa: E402
from evit_mm.benchmark.inputs import count_type, shape_type  # noqa: E402
from evit_mm.benchmark.winograd_convs import RETINANET_HEAD_SHAPES, compare_winograd, format_conv_rows  # noqa: E402
from evit_mm.models.eager_kernels import cpu_description  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--shapes', nargs='+', type=shape_type(dims=4), default=list(RETINANET_HEAD_SHAPES),
                        help="CINxCOUTxHxW per convolution (default: the RetinaNet head's at 800x1333)")
    parser.add_argument('--threads', type=count_type(1), default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--warmup', type=count_type(0), default=1)
    parser.add_argument('--repeats', type=count_type(1), default=5)
    add_allocator_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = tuple(args.shapes)
    print(f'torch {torch.__version__}, cpu ({cpu_description()}), {torch.get_num_threads()} threads, float32, '
          f'{apply_allocator_argument(args)}')
    print(format_conv_rows(compare_winograd(shapes, args.warmup, args.repeats)))


if __name__ == '__main__':
    main()

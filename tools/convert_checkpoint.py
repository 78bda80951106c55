#!/usr/bin/env python
"""Write a clean evit_mm backbone checkpoint from an official, timm or evit_mm (classifier/detector/segmentor)
EfficientViT checkpoint.

    python tools/convert_checkpoint.py efficientvit_m4.pth evit_m4_backbone.pth --arch m4
    python tools/convert_checkpoint.py efficientvit_m4.pth evit_m4_backbone.safetensors --arch m4
    python tools/convert_checkpoint.py hf-hub:timm/efficientvit_m4.r224_in1k evit_m4_backbone.pth --arch m4

The output holds ``{'state_dict': backbone tensors}`` (or a safetensors file) with evit_mm/timm key names and
bias tables sized for the chosen windows; it loads with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.tools.convert import convert_checkpoint  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='source checkpoint: local path, URL or hf-hub:ORG/NAME[@REVISION]')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument('--arch', default='m4', help='EfficientViT arch the checkpoint belongs to (m0-m5)')
    parser.add_argument('--window-size', type=int, nargs='+', default=[7],
                        help='attention window per stage (one value for all); 7 = dense prediction geometry')
    parser.add_argument('--prefix', default=None, help="backbone key prefix in SRC (auto: 'backbone.' if present)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    window = args.window_size[0] if len(args.window_size) == 1 else tuple(args.window_size)
    count = convert_checkpoint(args.src, args.dst, arch=args.arch, window_size=window, prefix=args.prefix)
    print(f'wrote {count} tensors to {args.dst}')


if __name__ == '__main__':
    main()

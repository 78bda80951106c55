#!/usr/bin/env python
"""Write the deterministic synthetic demo datasets (seconds, no network).

    python tools/make_demo_data.py coco data/coco_demo
    python tools/make_demo_data.py ade20k data/ade_demo/ADEChallengeData2016
    python tools/make_demo_data.py imagenet data/imagenet_demo
    python tools/make_demo_data.py coco data/coco_wide --num-train 1 --num-val 8 --size 600x1000 --seed 5
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.benchmark.inputs import count_type, shape_type  # noqa: E402
from evit_mm.data.demo_ade20k import make_ade20k_demo  # noqa: E402
from evit_mm.data.demo_coco import make_coco_demo  # noqa: E402
from evit_mm.data.demo_imagenet import make_imagenet_demo  # noqa: E402

MAKERS = {'coco': make_coco_demo, 'ade20k': make_ade20k_demo, 'imagenet': make_imagenet_demo}
#: The layouts whose generators take image counts and an HxW size (ImageNet's takes counts per class).
SIZED_LAYOUTS = ('coco', 'ade20k')


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('layout', choices=sorted(MAKERS), help='dataset layout')
    parser.add_argument('root', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--num-train', type=count_type(1), help="training images (coco, ade20k; default: the demo's)")
    parser.add_argument('--num-val', type=count_type(1), help="validation images (coco, ade20k; default: the demo's)")
    parser.add_argument('--size', type=shape_type(), help="image size HxW (coco, ade20k; default: the demo's)")
    args = parser.parse_args(argv)
    options = {name: value for name, value in (('num_train', args.num_train), ('num_val', args.num_val),
                                               ('size', args.size)) if value is not None}
    if options and args.layout not in SIZED_LAYOUTS:
        parser.error(f'--num-train, --num-val and --size apply to {" and ".join(SIZED_LAYOUTS)}, not {args.layout}')
    if Path(args.root).exists() and not Path(args.root).is_dir():
        parser.error(f'root {args.root!r} is a file; give a folder (made if missing)')
    print(f'demo data ready: {MAKERS[args.layout](args.root, seed=args.seed, **options)}')


if __name__ == '__main__':
    main()

#!/usr/bin/env python
"""Write the deterministic synthetic demo datasets (seconds, no network).

    python tools/make_demo_data.py coco data/coco_demo
    python tools/make_demo_data.py ade20k data/ade_demo/ADEChallengeData2016
    python tools/make_demo_data.py imagenet data/imagenet_demo
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.data.demo_ade20k import make_ade20k_demo  # noqa: E402
from evit_mm.data.demo_coco import make_coco_demo  # noqa: E402
from evit_mm.data.demo_imagenet import make_imagenet_demo  # noqa: E402

MAKERS = {'coco': make_coco_demo, 'ade20k': make_ade20k_demo, 'imagenet': make_imagenet_demo}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('layout', choices=sorted(MAKERS), help='dataset layout')
    parser.add_argument('root', help='output folder')
    parser.add_argument('--seed', type=int, default=0)
    args = parser.parse_args(argv)
    print(f'demo data ready: {MAKERS[args.layout](args.root, seed=args.seed)}')


if __name__ == '__main__':
    main()

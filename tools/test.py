#!/usr/bin/env python
"""Evaluate a checkpoint of any evit_mm config (COCO AP, mIoU, top-1/top-5, by the config's evaluator).

    python tools/test.py configs/retinanet_evit_m4.py work_dirs/retinanet_evit_m4/epoch_12.pth \
        [--out results.pkl] [--show-dir vis] [--launcher pytorch]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.tools.entry import run  # noqa: E402
from evit_mm.tools.test import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(run(main, sys.argv[1:]))

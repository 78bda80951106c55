#!/usr/bin/env python
"""Throughput of backbones and whole detection/segmentation/classification pipelines on CPU or GPU.

    python tools/benchmark.py evit_m4 timm:efficientvit_m4 resnet50 swin-t --shape 224x224 --batch-size 16
    python tools/benchmark.py configs/retinanet_evit_m4.py --modes predict --shape 800x1333 --checkpoint CKPT
    python tools/benchmark.py --help
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.benchmark.cli import main  # noqa: E402
from evit_mm.tools.entry import run  # noqa: E402

if __name__ == '__main__':
    sys.exit(run(main, sys.argv[1:]))

#!/usr/bin/env python
"""The main job on built-in demo data (what `make demo` runs): write the synthetic COCO-format shapes dataset if
missing, train RetinaNet + EfficientViT-M0 on it from scratch on the CPU, evaluate, and print COCO bbox AP.

    python tools/demo.py [--work-dir work_dirs/demo] [--epochs N]
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.tools.demo import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

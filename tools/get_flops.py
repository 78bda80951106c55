#!/usr/bin/env python
"""Parameters and FLOPs (multiply-accumulates, mmengine's counter) of a config's model or a backbone at a shape.

    python tools/get_flops.py configs/retinanet_evit_m4.py --shape 800x1333
    python tools/get_flops.py evit_m4 --shape 224x224
    python tools/get_flops.py configs/upernet_evit_m4_ade20k.py --shape 512 1024 --show-table --max-depth 1
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.benchmark.flops import main  # noqa: E402
from evit_mm.tools.entry import run  # noqa: E402

if __name__ == '__main__':
    sys.exit(run(main, sys.argv[1:]))

#!/usr/bin/env python
"""Train any evit_mm config (detection, segmentation, classification) with mmengine's Runner.

    python tools/train.py configs/retinanet_evit_m4.py [--work-dir DIR] [--amp] [--resume [PATH]]
    torchrun --nproc-per-node 8 tools/train.py CONFIG --launcher pytorch     (or tools/dist_train.sh)
    srun ... python tools/train.py CONFIG --launcher slurm                   (or tools/slurm_train.sh)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.tools.entry import run  # noqa: E402
from evit_mm.tools.train import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(run(main, sys.argv[1:]))

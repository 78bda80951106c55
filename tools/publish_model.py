#!/usr/bin/env python
"""Publish a trained model: the weights and plain metadata of a training checkpoint, without the optimizer, the
schedulers or mmengine's training state, named with the first 8 hex digits of the file's SHA-256.

    python tools/publish_model.py work_dirs/retinanet_evit_m4/epoch_12.pth retinanet_evit_m4_coco.pth
    # -> retinanet_evit_m4_coco-1a2b3c4d.pth, for tools/test.py, load_from or mmdet's/mmseg's inferencers

The file loads with ``torch.load(path, weights_only=True)`` with nothing but torch installed.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.tools.entry import run  # noqa: E402
from evit_mm.tools.publish import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(run(main, sys.argv[1:]))

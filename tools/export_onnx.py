#!/usr/bin/env python
"""Export an EfficientViT backbone, or a detector/segmentor/classifier in tensor mode, to ONNX with dynamic batch,
height and width, and check it against PyTorch with ONNX Runtime at several sizes.

    python tools/export_onnx.py evit_m4 evit_m4.onnx --deploy
    python tools/export_onnx.py configs/retinanet_evit_m4.py retinanet.onnx --checkpoint CKPT --shape 800x1344
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.deploy.cli import main  # noqa: E402
from evit_mm.tools.entry import run  # noqa: E402

if __name__ == '__main__':
    sys.exit(run(main, sys.argv[1:]))

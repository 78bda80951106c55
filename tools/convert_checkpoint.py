#!/usr/bin/env python
"""Write a clean evit_mm backbone checkpoint from an official, timm or evit_mm (classifier/detector/segmentor)
EfficientViT checkpoint, or (``--to timm``) an ImageNet classifier as timm's ``efficientvit_m*``.

    python tools/convert_checkpoint.py efficientvit_m4.pth evit_m4_backbone.pth
    python tools/convert_checkpoint.py efficientvit_m4.pth evit_m4_backbone.safetensors --arch m4
    python tools/convert_checkpoint.py hf-hub:timm/efficientvit_m4.r224_in1k evit_m4_backbone.pth
    python tools/convert_checkpoint.py work_dirs/evit_m4_in1k/epoch_310.pth model.safetensors --to timm

The arch (m0-m5) is read from the checkpoint's weights unless --arch names it. The backbone output holds
``{'state_dict': backbone tensors}`` (or a safetensors file) with evit_mm/timm key names and bias tables sized for
the chosen windows; it loads with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``. The timm output is the state
dict of ``timm.create_model('efficientvit_m4', num_classes=N)``, checked against it before it is written.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evit_mm.tools.convert import main  # noqa: E402
from evit_mm.tools.entry import run  # noqa: E402

if __name__ == '__main__':
    sys.exit(run(main, sys.argv[1:]))

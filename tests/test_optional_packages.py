"""evit_mm in an environment with only one of mmdet and mmseg (``pip install --no-deps`` into an existing setup).

Each test runs a fresh interpreter in which the other package cannot be imported (``sys.modules[name] = None``: its
imports fail and ``importlib.util.find_spec`` reports it absent, as for a package that is not installed), imports
evit_mm and builds and runs a model of the task that remains from the project's demo config.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.conftest import REPO_ROOT

PROLOGUE = """
import sys
sys.modules[{missing!r}] = None
import torch
import evit_mm
from mmengine.config import Config
from mmengine.registry import MODELS
assert 'EfficientViT' in MODELS.module_dict and 'EfficientViTClassifier' in MODELS.module_dict
try:
    getattr(evit_mm.models, {absent_model!r})
except ImportError as error:
    print('ERROR:', error)
else:
    raise AssertionError('{absent_model} without {missing}')
"""

DETECTION = """
from mmdet.utils import register_all_modules
register_all_modules()
from mmdet.registry import MODELS as DET_MODELS
assert evit_mm.EfficientViTFPN is evit_mm.models.EfficientViTFPN and 'EfficientViTFPN' in evit_mm.__all__
cfg = Config.fromfile('configs/demo/retinanet_evit_m0_coco_demo.py')
model = DET_MODELS.build(cfg.model).eval()
with torch.no_grad():
    outputs = model(torch.rand(1, 3, 128, 160), mode='tensor')
print('OUTPUTS:', len(outputs[0]))
"""

SEGMENTATION = """
from mmseg.utils import register_all_modules
register_all_modules()
from mmseg.registry import MODELS as SEG_MODELS
assert 'EfficientViTFPN' not in evit_mm.__all__ and 'ChannelsLastCrossEntropyLoss' in evit_mm.models.__all__
cfg = Config.fromfile('configs/demo/fpn_evit_m0_ade20k_demo.py')
try:
    SEG_MODELS.build(cfg.model)
except ImportError as error:
    print('BUILD ERROR:', error)
else:
    raise AssertionError('EfficientViTFPN built without mmdet')
# mmseg's own FPN over the three stages (strides 16, 32, 64) in place of the neck
cfg.model.neck = dict(type='FPN', in_channels=[64, 128, 192], out_channels=64, num_outs=3)
cfg.model.decode_head.update(in_index=[0, 1, 2], in_channels=[64, 64, 64], feature_strides=[16, 32, 64])
model = SEG_MODELS.build(cfg.model).eval()
with torch.no_grad():
    outputs = model(torch.rand(1, 3, 128, 160), mode='tensor')
print('OUTPUTS:', tuple(outputs.shape))
"""


def _run_without(missing: str, absent_model: str, body: str) -> str:
    script = PROLOGUE.format(missing=missing, absent_model=absent_model) + body
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(script)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _line(stdout: str, prefix: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(prefix))


def test_detection_without_mmseg() -> None:
    stdout = _run_without('mmseg', 'ChannelsLastCrossEntropyLoss', DETECTION)
    assert ("evit_mm.ChannelsLastCrossEntropyLoss builds on mmseg, which is not installed in this environment: "
            "pip install 'mmsegmentation>=") in _line(stdout, 'ERROR:')
    assert _line(stdout, 'OUTPUTS:') == 'OUTPUTS: 5'  # classification scores of RetinaNet's five levels


def test_segmentation_without_mmdet() -> None:
    stdout = _run_without('mmdet', 'EfficientViTFPN', SEGMENTATION)
    message = "evit_mm.EfficientViTFPN builds on mmdet, which is not installed in this environment: pip install 'mmdet>="
    assert message in _line(stdout, 'ERROR:')
    assert message in _line(stdout, 'BUILD ERROR:')  # the project's config, whose neck is EfficientViTFPN
    assert _line(stdout, 'OUTPUTS:') == 'OUTPUTS: (1, 5, 8, 10)'  # 5 classes at stride 16 with mmseg's FPN

"""``scripts/device/``: what the lent GPU machine runs. Its stand-in for mmcv's compiled ops must give mmcv's NMS
results and let mmdet predict; checked here against the real compiled mmcv, since the GPU machine is rarely lent
and its minutes are too few to debug there."""
from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

STAND_IN = REPO_ROOT / 'scripts/device/mmcv_ext.py'


def _stand_in():
    spec = importlib.util.spec_from_file_location('mmcv_ext_stand_in', STAND_IN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('offset', [0, 1])
def test_stand_in_nms_keeps_what_mmcv_keeps(offset):
    from mmcv import _ext
    gen = torch.Generator().manual_seed(offset)
    corners = torch.rand(300, 2, generator=gen) * 200
    boxes = torch.cat([corners, corners + 5 + torch.rand(300, 2, generator=gen) * 60], dim=1)
    scores = torch.rand(300, generator=gen)
    for threshold in (0.3, 0.5, 0.7):
        expected = _ext.nms(boxes, scores, iou_threshold=threshold, offset=offset)
        got = _stand_in().nms(boxes, scores, iou_threshold=threshold, offset=offset)
        assert 0 < len(got) < 300 and torch.equal(got, expected)


def test_other_ops_import_and_raise_naming_themselves():
    stand_in = _stand_in()
    assert hasattr(stand_in, 'roi_align_forward') and not hasattr(stand_in, '__wrapped__')
    with pytest.raises(NotImplementedError, match="mmcv op 'roi_align_forward' is not available"):
        stand_in.roi_align_forward(torch.zeros(1))
    assert 'stood in for' in stand_in.get_compiling_cuda_version()


def test_a_detector_predicts_through_the_stand_in():
    code = f'''
import importlib.util, sys
spec = importlib.util.spec_from_file_location('mmcv._ext', {str(STAND_IN)!r})
stand_in = importlib.util.module_from_spec(spec); spec.loader.exec_module(stand_in)
sys.modules['mmcv._ext'] = stand_in  # before mmcv.ops loads its extension
import mmcv.ops, torch
assert sys.modules['mmcv.ops.nms'].ext_module is stand_in
from evit_mm.benchmark.inputs import synthetic_batch
from evit_mm.benchmark.targets import build_target
target = build_target({str(REPO_ROOT / 'configs/demo/retinanet_evit_m0_coco_demo.py')!r})
target.model.test_cfg.score_thr = 0.0
with torch.no_grad():
    boxes = target.model.eval().test_step(synthetic_batch(target.kind, 1, 96, 128))[0].pred_instances.bboxes
print(len(boxes))
'''
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[-1]) > 0  # detections came through NMS

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


@pytest.mark.parametrize('aligned', [True, False])
def test_stand_in_roi_align_averages_what_mmcv_averages(aligned):
    from mmcv import _ext
    gen = torch.Generator().manual_seed(int(aligned))
    features = torch.randn(2, 8, 40, 56, generator=gen)
    corners = torch.rand(30, 2, generator=gen) * torch.tensor([400.0, 280.0])
    rois = torch.cat([torch.randint(0, 2, (30, 1), generator=gen).float(), corners,
                      corners + 8 + torch.rand(30, 2, generator=gen) * 120], dim=1)
    outputs = []
    for ext in (_ext, _stand_in()):
        output, empty = features.new_zeros(30, 8, 7, 7), features.new_zeros(0)
        ext.roi_align_forward(features, rois, output, empty, empty, aligned_height=7, aligned_width=7,
                              spatial_scale=1 / 8, sampling_ratio=0, pool_mode=1, aligned=aligned)
        outputs.append(output)
    assert outputs[0].abs().sum() > 0
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(NotImplementedError, match='max pooling'):
        _stand_in().roi_align_forward(features, rois, outputs[0], empty, empty, aligned_height=7, aligned_width=7,
                                      spatial_scale=1 / 8, sampling_ratio=0, pool_mode=0, aligned=aligned)


def test_other_ops_import_and_raise_naming_themselves():
    stand_in = _stand_in()
    assert hasattr(stand_in, 'deform_conv_forward') and not hasattr(stand_in, '__wrapped__')
    with pytest.raises(NotImplementedError, match="mmcv op 'deform_conv_forward' is not available"):
        stand_in.deform_conv_forward(torch.zeros(1))
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

"""Deployment on bfloat16 weights: which parts convert, float32 at their boundaries, outputs close to float32."""
import copy
import math
import warnings

import pytest
import torch

from evit_mm.benchmark.inputs import synthetic_batch
from evit_mm.benchmark.precision import norm_relative_error
from evit_mm.benchmark.targets import build_target
from evit_mm.benchmark.tensor_mode import TensorMode
from evit_mm.deploy import optimize_for_inference, run_in_bfloat16
from evit_mm.deploy.bfloat16 import Bfloat16Forward, cpu_bfloat16_speedup
from evit_mm.deploy.flat_outputs import flatten_outputs
from evit_mm.models import EfficientViT
from evit_mm.models.winograd import WinogradConv2d
from evit_mm.tools import test as test_tool
from tests.conftest import REPO_ROOT
from tests.helpers import randomize_

#: bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9 per value); through a whole network the features
#: measured 0.3-0.4% off float32 in norm. Three times that still fails a wrong cast or a float32 part left behind.
RELATIVE_TOLERANCE = 1.5e-2


def _floating_dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {t.dtype for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()}


@pytest.mark.parametrize('deploy', [False, True], ids=['eval', 'deployed'])
@pytest.mark.parametrize('shape', [(1, 3, 97, 131), (2, 3, 64, 64)])
def test_backbone_on_bfloat16_weights_stays_close(deploy, shape):
    model = randomize_(EfficientViT('m0', window_size=7))
    if deploy:
        model.switch_to_deploy()
    x = torch.randn(*shape)
    with torch.inference_mode():
        expected = model(x)
        assert run_in_bfloat16(model) == ('model',)  # a bare backbone converts whole
        got = model(x)  # float32 in
    assert _floating_dtypes(model) == {torch.bfloat16}
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32 and g.shape == e.shape  # float32 out
        assert norm_relative_error(g, e) < RELATIVE_TOLERANCE


def test_forward_casts_nested_floating_tensors_only():
    seen = {}

    def forward(maps, scale, labels=None, note=''):
        seen.update(maps=[m.dtype for m in maps], scale=scale.dtype, labels=labels.dtype, note=note)
        return {'out': [m * scale for m in maps], 'labels': labels}

    wrapped = Bfloat16Forward(forward)
    out = wrapped([torch.ones(2), torch.ones(3, dtype=torch.float64)], torch.tensor(2.0),
                  labels=torch.arange(3), note='kept')
    assert seen == dict(maps=[torch.bfloat16] * 2, scale=torch.bfloat16, labels=torch.int64, note='kept')
    assert [m.dtype for m in out['out']] == [torch.float32] * 2 and out['labels'].dtype == torch.int64


def test_converting_twice_wraps_once_and_copies_work():
    model = EfficientViT('m0', window_size=7).eval()
    run_in_bfloat16(model)
    run_in_bfloat16(model)
    assert not isinstance(model.forward.forward, Bfloat16Forward)
    clone = copy.deepcopy(model)  # the wrapped forward is bound to the copy, not to the original
    assert clone.forward.forward.__self__ is clone
    with torch.inference_mode():
        assert all(f.dtype == torch.float32 for f in clone(torch.randn(1, 3, 64, 64)))


@pytest.mark.parametrize('config, parts', [
    ('retinanet_evit_m0.py', ('backbone', 'neck', 'bbox_head')),
    ('fpn_evit_m4_ade20k.py', ('backbone', 'neck', 'decode_head')),
])
def test_dense_pipelines_on_bfloat16_weights(config, parts):
    target = build_target(str(REPO_ROOT / 'configs' / config))
    randomize_(target.model)
    module = TensorMode(target).eval()
    x = torch.randn(1, 3, 203, 299)
    with torch.inference_mode():
        expected = flatten_outputs(module(x))
        summary = optimize_for_inference(target.model, bfloat16=True)
        got = flatten_outputs(module(x))
        # the predict path: mmseg's decode head is called as self.forward(...), mmdet's head as self(...)
        predictions = target.model.test_step(synthetic_batch(target.kind, 1, 96, 128))
    assert summary.bfloat16_parts == parts and 'bfloat16 weights' in str(summary)
    for name in parts:
        assert _floating_dtypes(getattr(target.model, name)) == {torch.bfloat16}, name
    # the head's and neck's wide 3x3 convs run Winograd F(2x2, 3x3) in bfloat16
    winograd = [m for m in target.model.modules() if isinstance(m, WinogradConv2d)]
    assert summary.winograd_convs == len(winograd) > 0 and all(m.weight.dtype == torch.bfloat16 for m in winograd)
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32 and g.shape == e.shape
        assert norm_relative_error(g, e) < RELATIVE_TOLERANCE
    assert len(predictions) == 1
    result = predictions[0]
    floats = (result.pred_instances.bboxes, result.pred_instances.scores) if 'retinanet' in config else (
        result.seg_logits.data,)
    assert all(t.dtype == torch.float32 for t in floats)
    # a later call reports the model as it is: its parts still on bfloat16 weights, now also under CUDA graphs (the
    # graph wrapper outside the bfloat16 one)
    again = optimize_for_inference(target.model, cuda_graphs=True)
    assert again.bfloat16_parts == again.cuda_graph_parts == parts


def test_two_stage_detector_keeps_its_roi_head_in_float32():
    target = build_target(str(REPO_ROOT / 'configs/mask_rcnn_evit_m4.py'))
    model = randomize_(target.model)
    x = torch.randn(1, 3, 256, 320)
    with torch.inference_mode():
        expected = model.rpn_head(model.extract_feat(x))
        summary = optimize_for_inference(model, bfloat16=True)
        got = model.rpn_head(model.extract_feat(x))
        predictions = model.test_step(synthetic_batch(target.kind, 1, 128, 160))
    assert summary.bfloat16_parts == ('backbone', 'neck', 'rpn_head')
    assert _floating_dtypes(model.roi_head) == {torch.float32}
    mask_head_convs = [m for m in model.roi_head.modules() if isinstance(m, WinogradConv2d)]
    assert len(mask_head_convs) == 4 and all(m.weight.dtype == torch.float32 for m in mask_head_convs)
    assert summary.winograd_convs > 4 and summary.roi_aligns == 8  # also the bfloat16 neck's; float32 RoIAligns
    for g, e in zip(flatten_outputs(got), flatten_outputs(expected), strict=True):
        assert g.dtype == torch.float32 and norm_relative_error(g, e) < RELATIVE_TOLERANCE
    assert predictions[0].pred_instances.bboxes.dtype == torch.float32


def test_warns_where_the_cpu_has_no_native_bfloat16(monkeypatch):
    monkeypatch.setattr('evit_mm.deploy.bfloat16.native_bfloat16', lambda device: False)
    with pytest.warns(UserWarning, match='bfloat16 deploy on cpu, which has no native bfloat16 arithmetic'):
        optimize_for_inference(EfficientViT('m0', window_size=7).eval(), bfloat16=True)


def test_warns_where_the_cpus_bfloat16_measured_slower(monkeypatch):
    """oneDNN's flag says the CPU has bfloat16 instructions, not that they are faster: an Intel Xeon without AMX
    ran the deployed M4 0.68x as fast on bfloat16 weights."""
    monkeypatch.setattr('evit_mm.deploy.bfloat16.native_bfloat16', lambda device: True)
    monkeypatch.setattr('evit_mm.deploy.bfloat16.cpu_bfloat16_speedup', lambda: 0.68)
    with pytest.warns(UserWarning, match=r'bfloat16 deploy on this CPU \(.+, [A-Z0-9_]+\): its bfloat16 instructions '
                                         r'measured slower than float32 \(a 1x1 convolution 0.68x as fast\)'):
        optimize_for_inference(EfficientViT('m0', window_size=7).eval(), bfloat16=True)
    monkeypatch.setattr('evit_mm.deploy.bfloat16.cpu_bfloat16_speedup', lambda: 1.6)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        optimize_for_inference(EfficientViT('m0', window_size=7).eval(), bfloat16=True)


def test_cpu_bfloat16_speedup_is_a_measured_ratio_that_leaves_the_random_stream_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    speedup = cpu_bfloat16_speedup.__wrapped__(rounds=1)  # emulated where the CPU has no bfloat16: still a ratio
    assert math.isfinite(speedup) and 0 < speedup < 100
    assert torch.equal(torch.rand(3), expected)  # optimize_for_inference(bfloat16=True) draws nothing of the user's


def test_test_tool_asks_for_deploy_with_bfloat16(capsys):
    with pytest.raises(SystemExit):
        test_tool.parse_args(['config.py', 'checkpoint.pth', '--bfloat16'])
    assert '--bfloat16 changes the deployed model; add --deploy' in capsys.readouterr().err
    assert test_tool.parse_args(['config.py', 'checkpoint.pth', '--deploy', '--bfloat16']).bfloat16


def test_classifier_runs_its_backbone_on_bfloat16_weights_and_its_head_in_float32():
    target = build_target(str(REPO_ROOT / 'configs/evit_m0_in1k.py'))
    model = randomize_(target.model)
    batch = synthetic_batch(target.kind, 2, 128, 160)
    with torch.inference_mode():
        expected = torch.stack([r['pred_score'] for r in model.test_step(batch)])
        summary = optimize_for_inference(model, bfloat16=True)
        got = torch.stack([r['pred_score'] for r in model.test_step(batch)])
    assert summary.bfloat16_parts == ('backbone',) and _floating_dtypes(model.head) == {torch.float32}
    assert got.dtype == torch.float32 and norm_relative_error(got, expected) < RELATIVE_TOLERANCE

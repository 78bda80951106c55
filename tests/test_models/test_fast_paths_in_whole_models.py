"""The backbone's fast paths inside whole models in training: mmdet's and mmseg's necks, heads and losses take the
channels-last maps and send their gradients back through them. Losses and every parameter's gradient of a detector
and a segmentor with the default backbone against the same models with the reference backbone (NCHW maps, NCHW
attention, no GEMM convs), in float64 on a synthetic batch with ground truth."""
from __future__ import annotations

import copy

import pytest
import torch

from evit_mm.benchmark.inputs import synthetic_batch
from evit_mm.benchmark.targets import build_target
from evit_mm.benchmark.training import num_classes_of
from tests.conftest import REPO_ROOT

REFERENCE_BACKBONE = {'model.backbone.fast_attention': False, 'model.backbone.channels_last': False,
                      'model.backbone.gemm_convs': False, 'model.backbone.fold_eval_bn': False}


def _losses_and_gradients(model: torch.nn.Module, packed: dict) -> tuple[dict, dict]:
    torch.manual_seed(0)  # the same dropout masks (mmseg's decode heads) in both models
    data = model.data_preprocessor(copy.deepcopy(packed), True)
    data['inputs'] = data['inputs'].double()
    losses, log = model.parse_losses(model(**data, mode='loss'))
    losses.backward()
    log = {key: float(torch.as_tensor(value).detach()) for key, value in log.items()}
    return log, {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


# RetinaNet: no NMS in its training step (mmcv's CPU NMS takes float32 only); a two-stage detector's RPN runs it
@pytest.mark.parametrize('config', ['configs/demo/retinanet_evit_m0_coco_demo.py',
                                    'configs/demo/fpn_evit_m0_ade20k_demo.py'])
def test_whole_model_gradients_with_the_fast_backbone_equal_the_reference(config):
    target = build_target(str(REPO_ROOT / config))
    fast = target.model.double().train()
    reference = build_target(str(REPO_ROOT / config), cfg_options=REFERENCE_BACKBONE).model.double().train()
    reference.load_state_dict(fast.state_dict())
    assert fast.backbone.channels_last and not reference.backbone.channels_last
    packed = synthetic_batch('detector' if 'coco' in config else 'segmentor', 2, 160, 224, num_classes_of(target),
                             ground_truth=True)
    fast_log, fast_grads = _losses_and_gradients(fast, packed)
    ref_log, ref_grads = _losses_and_gradients(reference, packed)
    assert fast_log.keys() == ref_log.keys() and fast_grads.keys() == ref_grads.keys()
    for key in ref_log:
        assert fast_log[key] == pytest.approx(ref_log[key], rel=1e-10), key
    assert len(ref_grads) > 300  # backbone, neck and head
    for name, grad in ref_grads.items():
        scale = grad.abs().max().clamp_min(1e-6)
        assert (fast_grads[name] - grad).abs().max() <= 1e-8 * scale, name

"""optimize_for_inference on whole models: same outputs, and the rewrites it reports actually happened."""
import dataclasses

import pytest
import torch
from mmcv.ops import RoIAlign
from torch.nn.modules.batchnorm import _BatchNorm

from evit_mm.benchmark.targets import build_target
from evit_mm.benchmark.tensor_mode import TensorMode
from evit_mm.deploy import optimize_for_inference
from evit_mm.deploy.flat_outputs import flatten_outputs
from evit_mm.models.fused_conv import FusedConv2d
from evit_mm.models.roi_align import SeparableRoIAlign
from evit_mm.models.winograd import WinogradConv2d
from tests.conftest import REPO_ROOT
from tests.helpers import randomize_


@pytest.mark.parametrize('config', ['retinanet_evit_m0.py', 'fpn_evit_m4_ade20k.py', 'upernet_evit_m4_ade20k.py'])
def test_deployed_model_keeps_outputs(config):
    target = build_target(str(REPO_ROOT / 'configs' / config))
    randomize_(target.model)  # trained-like BatchNorm statistics everywhere, so that folding them is not trivial
    module = TensorMode(target).eval()
    x = torch.randn(1, 3, 203, 299)
    with torch.inference_mode():
        expected = flatten_outputs(module(x))
        summary = optimize_for_inference(target.model)
        got = flatten_outputs(module(x))
    assert summary.fused == 'EfficientViT' and summary.winograd_convs > 0
    backbone = target.model.backbone  # two depthwise residuals per block and per downsampling (paper Fig. 3)
    assert summary.identities_folded == 2 * sum(backbone.arch.depths) + 2 * (len(backbone.stages) - 1)
    assert f'({summary.identities_folded} depthwise residuals with the identity in their kernel)' in str(summary)
    deployed_convs = sum(isinstance(m, FusedConv2d) for m in backbone.modules())
    assert summary.prepacked_convs == deployed_convs > 0
    assert f'(weights prepacked for oneDNN on CPU: on in {deployed_convs} convs)' in str(summary)
    if 'retinanet' in config:  # the 4 + 4 stacked head convs carry their ReLU; no BatchNorm outside the backbone
        assert summary.winograd_relus == 8 and summary.batch_norms_folded == 0
    if 'upernet' in config:  # its ConvModules' BatchNorms fold, and then their ReLUs move into the Winograd convs
        assert summary.batch_norms_folded > 0 and summary.winograd_relus > 0
        assert not any(isinstance(m, _BatchNorm) for m in target.model.decode_head.modules())
    assert any(isinstance(m, WinogradConv2d) for m in target.model.modules())
    assert any(isinstance(m, FusedConv2d) and m.relu for m in target.backbone.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in target.backbone.modules())
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        assert (g - e).abs().max() <= 1e-4 * e.abs().max() + 1e-6
    again = optimize_for_inference(target.model)  # reports the same model; no BatchNorm is left to fold
    assert again == dataclasses.replace(summary, batch_norms_folded=0)
    with torch.inference_mode():  # repeated calls of the same deployed model differ by float rounding (~1e-6)
        for g, h in zip(got, flatten_outputs(module(x)), strict=True):
            assert (g - h).abs().max() <= 1e-5 * g.abs().max()


def test_switches_turn_rewrites_off():
    target = build_target(str(REPO_ROOT / 'configs/upernet_evit_m4_ade20k.py'))
    summary = optimize_for_inference(target.model, fused_kernels=False, winograd=False, fold_batch_norms=False,
                                     prepack_weights=False)
    assert summary.winograd_convs == 0 and summary.batch_norms_folded == 0 and summary.prepacked_convs == 0
    assert any(isinstance(m, _BatchNorm) for m in target.model.decode_head.modules())  # SyncBN in the config
    assert not any(isinstance(m, WinogradConv2d) for m in target.model.modules())
    assert all(not m.use_fused_kernel and not m.prepack_weights
               for m in target.backbone.modules() if isinstance(m, FusedConv2d))
    assert 'Conv+BN folded in EfficientViT' in str(summary) and 'prepacked' not in str(summary)


def test_two_stage_detector_roi_align_as_matrix_products():
    model = build_target(str(REPO_ROOT / 'configs/mask_rcnn_evit_m4.py')).model.eval()
    x = torch.randn(1, 3, 256, 320)
    gen = torch.Generator().manual_seed(0)
    corners = torch.rand(50, 2, generator=gen) * torch.tensor([220.0, 180.0])
    rois = torch.cat([torch.zeros(50, 1), corners, corners + torch.rand(50, 2, generator=gen) * 100 + 4], dim=1)
    extractors = (model.roi_head.bbox_roi_extractor, model.roi_head.mask_roi_extractor)
    with torch.inference_mode():
        feats = model.extract_feat(x)
        expected = [e(feats[:e.num_inputs], rois) for e in extractors]
        summary = optimize_for_inference(model, winograd=False)
        got = [e(feats[:e.num_inputs], rois) for e in extractors]
    assert summary.roi_aligns == 8  # 4 FPN levels for the boxes, 4 for the masks
    assert all(type(layer) is SeparableRoIAlign for e in extractors for layer in e.roi_layers)
    assert 'RoIAlign layers as matrix products' in str(summary)
    for g, e in zip(got, expected):
        assert g.shape == e.shape and e.abs().max() > 0
        assert (g - e).abs().max() <= 1e-5 * e.abs().max()
    kept = build_target(str(REPO_ROOT / 'configs/mask_rcnn_evit_m4.py')).model
    assert optimize_for_inference(kept, winograd=False, roi_align=False).roi_aligns == 0
    assert all(type(layer) is RoIAlign for layer in kept.roi_head.bbox_roi_extractor.roi_layers)

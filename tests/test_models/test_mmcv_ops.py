"""mmcv's compiled ops on EfficientViT's channels-last maps: Mask R-CNN's RoI features are those of the boxes.

mmcv's RoIAlign reads raw NCHW memory whatever the strides (mmcv issue #2203); without
:mod:`evit_mm.compat.mmcv_ops` the features below come out unrelated to the boxes (a difference as large as
the features themselves), both forward and backward.
"""
import pytest
import torch
from mmcv.ops.roi_align import RoIAlignFunction

from evit_mm.benchmark.targets import build_target
from evit_mm.compat import mmcv_ops
from tests.conftest import REPO_ROOT


def _random_rois(count: int, height: int, width: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    corners = torch.rand(count, 2, generator=gen) * torch.tensor([width * 0.7, height * 0.7])
    sizes = (torch.rand(count, 2, generator=gen) * 0.5 + 0.1) * torch.tensor([width, height])
    return torch.cat([torch.zeros(count, 1), corners, corners + sizes], dim=1)


def test_mask_rcnn_roi_features_match_contiguous_maps():
    model = build_target(str(REPO_ROOT / 'configs/mask_rcnn_evit_m4.py')).model.eval()
    height, width = 256, 320
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, height, width))
    assert feats[0].is_contiguous(memory_format=torch.channels_last) and not feats[0].is_contiguous()
    rois = _random_rois(40, height, width)
    extractor = model.roi_head.bbox_roi_extractor
    feats = [f.detach().requires_grad_() for f in feats[:extractor.num_inputs]]
    reference = [f.detach().contiguous().requires_grad_() for f in feats]
    got, expected = extractor(feats, rois), extractor(reference, rois)
    assert expected.abs().max() > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    weights = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    assert any(r.grad.abs().max() > 0 for r in reference)
    for f, r in zip(feats, reference):
        torch.testing.assert_close(f.grad, r.grad, rtol=0, atol=0)


def test_install_wraps_each_op_once():
    first = mmcv_ops.install()
    assert first > 0 and mmcv_ops.install() == first
    forward = RoIAlignFunction.forward
    assert getattr(forward, '_evit_mm_prepared', False)
    assert not getattr(forward.__wrapped__, '_evit_mm_prepared', False)  # one layer of wrapping, not two
    assert RoIAlignFunction in mmcv_ops.mmcv_op_functions()


def _deform_conv(x: torch.Tensor) -> torch.Tensor:
    from mmcv.ops import DeformConv2d
    conv = DeformConv2d(x.shape[1], 8, 3, padding=1)
    torch.nn.init.normal_(conv.weight, std=0.1)
    offset = torch.randn(x.shape[0], 18, *x.shape[2:], generator=torch.Generator().manual_seed(2))
    return conv(x, offset)


def _modulated_deform_conv(x: torch.Tensor) -> torch.Tensor:
    from mmcv.ops import ModulatedDeformConv2dPack
    conv = ModulatedDeformConv2dPack(x.shape[1], 8, 3, padding=1)
    torch.nn.init.normal_(conv.conv_offset.weight, std=0.1)  # offsets and masks that vary over the map
    return conv(x)


@pytest.mark.parametrize('op', [_deform_conv, _modulated_deform_conv], ids=['DeformConv2d', 'ModulatedDeformConv2d'])
def test_other_mmcv_ops_take_channels_last_maps(op):
    mmcv_ops.install()
    x = torch.randn(2, 16, 24, 30)
    torch.manual_seed(0)
    expected = op(x)
    torch.manual_seed(0)
    got = op(x.contiguous(memory_format=torch.channels_last))
    assert expected.abs().max() > 0.1
    # float rounding only (the modulated conv's offsets come from a plain conv, whose kernel depends on the layout)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_cpu_kernels_take_bfloat16_tensors_in_float32():
    """mmcv's CPU kernels read float32 only ("expected scalar type Float but found BFloat16" from NMS, RoIAlign "not
    implemented for 'BFloat16'"), which is what CPU autocast hands them: computed in float32, floating-point outputs
    and gradients back in bfloat16."""
    from mmcv.ops import nms, roi_align
    mmcv_ops.install()
    gen = torch.Generator().manual_seed(5)
    corners = torch.rand(60, 2, generator=gen) * 100
    boxes = torch.cat([corners, corners + 5 + torch.rand(60, 2, generator=gen) * 40], dim=1).bfloat16()
    scores = torch.rand(60, generator=gen).bfloat16()
    dets, keep = nms(boxes, scores, 0.5)
    expected_dets, expected_keep = nms(boxes.float(), scores.float(), 0.5)
    assert dets.dtype == torch.bfloat16 and 0 < len(keep) < 60
    assert torch.equal(keep, expected_keep) and torch.equal(dets, expected_dets.bfloat16())
    features = torch.randn(1, 8, 30, 40, generator=gen).bfloat16().requires_grad_()
    rois = torch.cat([torch.zeros(20, 1), _random_rois(20, 120, 160)[:, 1:]], dim=1)
    got = roi_align(features, rois, (7, 7), 0.25, 2, 'avg', True)
    got.float().sum().backward()
    reference = features.detach().float().requires_grad_()
    expected = roi_align(reference, rois, (7, 7), 0.25, 2, 'avg', True)
    expected.sum().backward()
    assert got.dtype == features.grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected.bfloat16())
    torch.testing.assert_close(features.grad, reference.grad.bfloat16())

"""EfficientViTFPN turns strides 16/32/64 into the pyramids RetinaNet and Mask R-CNN expect, as the official
downstream neck does (its computation and its parameter names, so that its COCO checkpoints load)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from evit_mm.models import EfficientViT, EfficientViTFPN

RETINANET = dict(start_level=0, add_extra_convs='on_input')  # the official RetinaNet neck's arguments


@pytest.mark.parametrize('trans, extra, expected', [
    (1, RETINANET, [8, 16, 32, 64, 128]),  # RetinaNet
    (2, dict(), [4, 8, 16, 32, 64]),  # Mask R-CNN, Semantic FPN, UperNet
])
def test_pyramid_strides(trans, extra, expected):
    backbone = EfficientViT('m0').eval()
    neck = EfficientViTFPN(backbone.out_channels, 32, num_outs=5, num_extra_trans_convs=trans, **extra).eval()
    h, w = 256, 384
    with torch.no_grad():
        outs = neck(backbone(torch.randn(1, 3, h, w)))
    assert [o.shape[1] for o in outs] == [32] * 5
    assert [(h // o.shape[2], w // o.shape[3]) for o in outs] == [(s, s) for s in expected]


def test_parameters_carry_the_official_names_and_shapes():
    """The official RetinaNet-EfficientViT-M4 neck (Cream/EfficientViT/downstream: ``lateral_convs``, ``fpn_convs``
    with the stride-128 conv on the input last, ``extra_trans_convs`` and ``extra_fpn_convs``, all with biases)."""
    neck = EfficientViTFPN([128, 256, 384], 256, num_outs=5, num_extra_trans_convs=1, **RETINANET)
    shapes = {k: tuple(v.shape) for k, v in neck.state_dict().items()}
    expected = {f'lateral_convs.{i}.conv.weight': (256, c, 1, 1) for i, c in enumerate((128, 256, 384))}
    expected |= {f'fpn_convs.{i}.conv.weight': (256, 256, 3, 3) for i in range(3)}
    expected |= {'fpn_convs.3.conv.weight': (256, 384, 3, 3), 'extra_trans_convs.0.conv.weight': (256, 256, 2, 2),
                 'extra_fpn_convs.0.conv.weight': (256, 256, 3, 3)}
    expected |= {k.replace('weight', 'bias'): (256,) for k in list(expected)}
    assert shapes == expected


def test_finer_levels_grow_from_the_finest_lateral_as_the_official_neck():
    """Two transposed-conv levels (Mask R-CNN) computed by hand the official way: laterals, top-down sum, the
    transposed convs chained on the finest lateral, each finer level refined by a 3x3 conv whose index counts from
    the finest level (``extra_fpn_convs[0]`` refines stride 4), then the FPN's own 3x3 convs."""
    torch.manual_seed(0)
    neck = EfficientViTFPN([16, 24, 32], 8, num_outs=5, num_extra_trans_convs=2).eval()
    for p in neck.parameters():
        torch.nn.init.normal_(p, std=0.2)
    inputs = tuple(torch.randn(1, c, 13 // 2 ** i + 1, 19 // 2 ** i + 1) for i, c in enumerate((16, 24, 32)))

    def conv(module, x, **kw):
        return F.conv2d(x, module.conv.weight, module.conv.bias, **kw)

    lat = [conv(m, x) for m, x in zip(neck.lateral_convs, inputs)]
    lat[1] = lat[1] + F.interpolate(lat[2], size=lat[1].shape[2:], mode='nearest')
    lat[0] = lat[0] + F.interpolate(lat[1], size=lat[0].shape[2:], mode='nearest')
    t = neck.extra_trans_convs
    stride8 = F.conv_transpose2d(lat[0], t[0].conv.weight, t[0].conv.bias, stride=2)
    stride4 = F.conv_transpose2d(stride8, t[1].conv.weight, t[1].conv.bias, stride=2)
    expected = [conv(neck.extra_fpn_convs[0], stride4, padding=1), conv(neck.extra_fpn_convs[1], stride8, padding=1)]
    expected += [conv(m, x, padding=1) for m, x in zip(neck.fpn_convs, lat)]
    with torch.no_grad():
        outs = neck(inputs)
    assert len(outs) == len(expected) == 5
    for out, ref in zip(outs, expected):
        assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)


def test_invalid_number_of_transposed_convs_and_inputs():
    with pytest.raises(ValueError, match=r'num_extra_trans_convs must be an int in \[0, num_outs=3\), got 3'):
        EfficientViTFPN([64, 128, 192], 32, num_outs=3, num_extra_trans_convs=3)
    with pytest.raises(ValueError, match=r'num_extra_trans_convs must be an int in \[0, num_outs=5\), got 1.5'):
        EfficientViTFPN([64, 128, 192], 32, num_outs=5, num_extra_trans_convs=1.5)
    with pytest.raises(ValueError, match=r'num_extra_trans_convs must be an int .*got True'):  # bool is no count
        EfficientViTFPN([64, 128, 192], 32, num_outs=5, num_extra_trans_convs=True)
    assert len(EfficientViTFPN([64, 128, 192], 32, num_outs=5, num_extra_trans_convs=np.int64(2)).extra_fpn_convs) == 2
    # mmdet's FPN: bare AssertionErrors for each of these
    with pytest.raises(ValueError, match='num_outs=3 does not fit: the 3 backbone levels from start_level to '
                                         'end_level and the 1 transposed-conv levels need num_outs >= 4'):
        EfficientViTFPN([64, 128, 192], 32, num_outs=3, num_extra_trans_convs=1)
    with pytest.raises(ValueError, match=r'the 2 backbone levels .* need num_outs == 3 \(no coarser levels'):
        EfficientViTFPN([64, 128, 192], 32, num_outs=4, num_extra_trans_convs=1, end_level=1)
    for levels in (dict(end_level=3), dict(start_level=3), dict(start_level=2, end_level=1)):
        with pytest.raises(ValueError, match=r'must index the 3 backbone levels \(0 <= start_level <= end_level <= 2'):
            EfficientViTFPN([64, 128, 192], 32, num_outs=5, num_extra_trans_convs=1, **levels)
    to_stage_1 = EfficientViTFPN([64, 128, 192], 32, num_outs=3, num_extra_trans_convs=1, end_level=1)
    shapes = [tuple(out.shape[2:]) for out in to_stage_1(
        (torch.zeros(1, 64, 8, 8), torch.zeros(1, 128, 4, 4), torch.zeros(1, 192, 2, 2)))]
    assert shapes == [(16, 16), (8, 8), (4, 4)]
    from_stage_1 = EfficientViTFPN([64, 128, 192], 32, num_outs=3, num_extra_trans_convs=1, start_level=1)
    assert len(from_stage_1.lateral_convs) == 2
    neck = EfficientViTFPN([64, 128, 192], 32, num_outs=5, num_extra_trans_convs=2)
    with pytest.raises(ValueError, match='expects 3 feature maps, got 2'):
        neck((torch.zeros(1, 64, 8, 8), torch.zeros(1, 128, 4, 4)))
    with pytest.raises(ValueError, match=r"built for maps of \[64, 128, 192\] channels, got \[128, 256, 384\]: set "
                       r"the neck's in_channels to the backbone's out_channels"):  # an M4 backbone under M0's neck
        neck(tuple(torch.zeros(1, c, 8 // 2**i, 8 // 2**i) for i, c in enumerate((128, 256, 384))))


@pytest.mark.parametrize('extra', [
    dict(),  # max-pooled extra levels (Mask R-CNN's FPN)
    dict(add_extra_convs='on_input'),
    dict(add_extra_convs='on_lateral', relu_before_extra_convs=True),
    dict(add_extra_convs='on_output', upsample_cfg=dict(scale_factor=2, mode='nearest')),
    dict(start_level=1, add_extra_convs='on_input'),
])
def test_without_transposed_convs_it_is_mmdets_fpn(extra):
    """The forward pass is written out (the transposed convs need the finest lateral): with none of them it must be
    mmdet's FPN, for each way FPN makes its coarser levels."""
    from mmdet.models.necks import FPN
    torch.manual_seed(0)
    ours = EfficientViTFPN([16, 24, 32], 8, num_outs=6, num_extra_trans_convs=0, **extra).eval()
    mmdet = FPN([16, 24, 32], 8, num_outs=6, **extra).eval()
    mmdet.load_state_dict(ours.state_dict())
    # odd sizes for the size-matched upsampling; a fixed factor needs exactly halving ones
    sizes = ((16, 24), (8, 12), (4, 6)) if 'upsample_cfg' in extra else ((13, 19), (7, 10), (4, 5))
    inputs = tuple(torch.randn(1, c, h, w) for c, (h, w) in zip((16, 24, 32), sizes))
    with torch.no_grad():
        for a, b in zip(ours(inputs), mmdet(inputs), strict=True):
            assert torch.equal(a, b)

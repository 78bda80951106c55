"""EfficientViTFPN turns strides 16/32/64 into the pyramids RetinaNet and Mask R-CNN expect."""
from __future__ import annotations

import pytest
import torch

from evit_mm.models import EfficientViT, EfficientViTFPN


@pytest.mark.parametrize('trans, extra, expected', [
    (1, dict(start_level=0, add_extra_convs='on_input'), [8, 16, 32, 64, 128]),  # RetinaNet
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


def test_invalid_number_of_transposed_convs():
    with pytest.raises(ValueError, match=r'num_extra_trans_convs must be in \[0, num_outs=3\)'):
        EfficientViTFPN([64, 128, 192], 32, num_outs=3, num_extra_trans_convs=3)

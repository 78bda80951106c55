"""``export_program``: one ``torch.export`` program for every batch size and image size, checked against eager."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evit_mm.deploy import SizeSpecialisedError, export_program, optimize_for_inference
from evit_mm.deploy import program_export
from evit_mm.deploy.program_export import dynamic_export_available, program_difference
from evit_mm.models import EfficientViT

needs_dynamic_export = pytest.mark.skipif(
    not dynamic_export_available(), reason=f'torch {torch.__version__} cannot export with symbolic sizes '
    f'(needs >= {program_export.DYNAMIC_EXPORT_TORCH}); test_old_torch_is_refused_with_the_version covers it')

#: (batch, height, width): padding needed or not (448 = 64 * 7), sides one window wide at every stage (100 -> 7, 4,
#: 2 rows) or at the last stage only (224 -> 14, 7, 4), the example's size, odd and large sizes, batches 1 and 3
SIZES = [(1, 448, 448), (1, 100, 130), (3, 224, 224), (1, 512, 640), (2, 837, 1314), (1, 65, 1000)]


@needs_dynamic_export
@pytest.mark.slow
@pytest.mark.parametrize('fast', [True, False], ids=['token-attention', 'reference-attention'])
def test_one_program_holds_at_every_size(fast):
    torch.manual_seed(0)
    model = EfficientViT('m0', out_indices=(0, 1, 2), fast_attention=fast).eval()
    for module in model.modules():  # non-trivial BatchNorm statistics, so that every layer's values count
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    program = export_program(model, torch.randn(1, 3, 512, 640))
    for batch, height, width in SIZES:
        assert program_difference(program, model, torch.randn(batch, 3, height, width)) < 1e-5, (batch, height, width)


@needs_dynamic_export
@pytest.mark.slow
def test_the_deployed_backbone_exports_too():
    torch.manual_seed(0)
    model = EfficientViT('m0', out_indices=(1, 2)).eval()
    optimize_for_inference(model)
    program = export_program(model, torch.randn(2, 3, 320, 384))
    for batch, height, width in SIZES[:3]:
        assert program_difference(program, model, torch.randn(batch, 3, height, width)) < 1e-5


class _FixedUpsample(nn.Module):
    """As mmseg's ``Upsample``: the output size computed with Python numbers from the input's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(side * 2.0) for side in x.shape[-2:]]
        return F.interpolate(x, size, mode='bilinear', align_corners=False) + 1


@needs_dynamic_export
def test_a_size_computed_in_python_is_caught_not_exported_silently():
    with pytest.raises(SizeSpecialisedError, match=r'differs from the model by inf at input \(3, 3, 53, 83\).*'
                                                   r'traced at \(1, 3, 16, 64\).*dynamic_hw=False'):
        export_program(_FixedUpsample(), torch.randn(1, 3, 16, 64))
    program = export_program(_FixedUpsample(), torch.randn(1, 3, 16, 64), dynamic_hw=False)
    assert program_difference(program, _FixedUpsample(), torch.randn(4, 3, 16, 64)) == 0


def test_old_torch_is_refused_with_the_version(monkeypatch):
    monkeypatch.setattr(program_export, 'dynamic_export_available', lambda: False)
    with pytest.raises(RuntimeError, match=rf'needs torch >= 2\.7.*this is torch {re.escape(torch.__version__)}'):
        export_program(nn.Identity(), torch.randn(1, 3, 8, 8))

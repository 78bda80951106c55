"""evit_mm's squeeze-excite (GEMMs on pooled vectors) against timm's ``SEModule`` (1x1 convs on 1x1 maps)."""
from __future__ import annotations

import pytest
import torch
from timm.layers import SqueezeExcite as TimmSqueezeExcite

from evit_mm.models.layers import SqueezeExcite
from tests.helpers import OpCalls


@pytest.mark.parametrize('channels', [256, 400, 1152])  # 400: squeezed width rounded up to 104, as timm does
def test_matches_timm_forward_and_backward(channels):
    torch.manual_seed(0)
    reference = TimmSqueezeExcite(channels, 0.25).double()
    ours = SqueezeExcite(channels).double()
    ours.load_state_dict(reference.state_dict())  # same keys and shapes
    x = torch.randn(3, channels, 5, 7, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x_ref = x.detach().clone().requires_grad_()
    x.requires_grad_()
    expected, actual = reference(x_ref), ours(x)
    torch.testing.assert_close(actual, expected)
    grad = torch.randn_like(expected)
    expected.backward(grad)
    actual.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad)
    for (name, p), q in zip(ours.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_runs_no_convolution():
    se = SqueezeExcite(64).eval()
    with torch.inference_mode(), OpCalls(torch.ops.aten.convolution.default) as seen:
        se(torch.randn(2, 64, 4, 4))
    assert not seen.calls

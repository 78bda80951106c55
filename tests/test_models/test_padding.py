"""zero_padded_nhwc == F.pad in NHWC order, for both memory layouts and uneven borders (including none)."""
import pytest
import torch
import torch.nn.functional as F

from evit_mm.models.padding import zero_padded_nhwc


@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('borders', [(1, 2, 1, 3), (0, 0, 0, 0), (2, 0, 0, 1)])
def test_zero_padded_nhwc_equals_f_pad(channels_last, borders):
    top, bottom, left, right = borders
    x = torch.randn(2, 5, 7, 9)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    # freed NaNs of exactly the output's size: the allocator tends to hand that memory back, so a border left
    # unzeroed shows up as NaN instead of passing on fresh (zeroed) pages
    shape = (2, top + 7 + bottom, left + 9 + right, 5)
    stale = torch.full(shape, float('nan'))
    del stale
    got = zero_padded_nhwc(x, top, bottom, left, right)
    expected = F.pad(x, (left, right, top, bottom)).permute(0, 2, 3, 1)
    assert got.is_contiguous()
    assert torch.equal(got, expected)

"""Winograd F(2x2, 3x3) convolution: same values as the direct convolution, and where it runs."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evit_mm.models.winograd import WinogradConv2d, convert_to_winograd, winograd_conv3x3, winograd_filter


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize('shape', [(1, 64, 16, 16), (2, 96, 37, 23), (3, 80, 17, 50), (1, 128, 1, 1)])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('bias,relu', [(True, False), (False, False), (True, True)])
def test_winograd_equals_direct_convolution(shape, channels_last, bias, relu):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(72, shape[1], 3, 3) * 0.05
    b = torch.randn(72) if bias else None
    got = winograd_conv3x3(x, winograd_filter(weight), b, relu)
    expected = F.conv2d(x, weight, b, padding=1)
    if relu:
        expected = F.relu(expected)
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert relative_error(got, expected) < 1e-5


def test_default_channel_threshold_is_the_geometric_mean():
    """Measured crossover: 128->128 is no faster by Winograd, 128->256 and 160->160 are."""
    def applies(cin, cout):
        return WinogradConv2d(cin, cout, 3, padding=1)._winograd_applies(torch.randn(1, cin, 32, 32))
    with torch.inference_mode():
        assert not applies(128, 128) and not applies(64, 256)
        assert applies(128, 256) and applies(160, 160) and applies(256, 256)


def test_module_runs_winograd_only_where_it_applies(monkeypatch):
    torch.manual_seed(0)
    conv = WinogradConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1).eval(), min_channels=64)
    calls = []
    import evit_mm.models.winograd as module
    real = module.winograd_conv3x3
    monkeypatch.setattr(module, 'winograd_conv3x3', lambda *a: calls.append(1) or real(*a))
    big, small = torch.randn(1, 64, 20, 20), torch.randn(1, 64, 8, 8)
    with torch.inference_mode():
        out = conv(big)
        assert calls == [1]
        conv(small)  # below min_pixels
        assert calls == [1]
    y = conv(big)  # autograd: the direct convolution
    assert calls == [1] and y.requires_grad
    assert relative_error(out, F.conv2d(big, conv.weight.detach(), conv.bias.detach(), padding=1)) < 1e-5
    conv.relu = True  # the direct path applies it too
    torch.testing.assert_close(conv(small), F.relu(F.conv2d(small, conv.weight, conv.bias, padding=1)))


def test_cached_filters_follow_new_weights():
    conv = WinogradConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1).eval(), min_channels=64)
    x = torch.randn(1, 64, 24, 24)
    with torch.no_grad():
        conv(x)
        conv.weight.mul_(2)  # in place: same storage, new version
        got = conv(x)
    assert relative_error(got, F.conv2d(x, conv.weight, conv.bias, padding=1)) < 1e-5


def test_convert_replaces_only_supported_convolutions():
    model = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.Conv2d(64, 64, 3, stride=2, padding=1),
                          nn.Sequential(nn.Conv2d(64, 64, 1), nn.Conv2d(64, 64, 3, padding=1, groups=64),
                                        nn.Conv2d(64, 32, 3, padding=1)))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert convert_to_winograd(model) == 2
    assert isinstance(model[0], WinogradConv2d) and isinstance(model[2][2], WinogradConv2d)
    assert type(model[1]) is nn.Conv2d and type(model[2][1]) is nn.Conv2d
    for k, v in model.state_dict().items():  # same keys, same tensors
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0)


def test_unsupported_geometry_is_an_error():
    with pytest.raises(ValueError, match='kernel 3x3, stride 1'):
        WinogradConv2d(8, 8, 3, stride=2, padding=1)

"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions: same values as the direct convolution, and where they run."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evit_mm.benchmark.precision import norm_relative_error
from evit_mm.models.winograd import (WINOGRAD_POINTS, WinogradConv2d, convert_to_winograd, winograd_conv3x3,
                                     winograd_filter, winograd_transforms)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize('tile', sorted(WINOGRAD_POINTS))
def test_transforms_compute_the_correlation_exactly(tile):
    """In float64, A^T [(G g) * (B^T d)] is the correlation of d with g (1-D; the 2-D transform nests it)."""
    t = winograd_transforms(tile)
    bt = torch.zeros(t.alpha, t.alpha, dtype=torch.float64)
    for i, terms in enumerate(t.input_terms):
        for j, coefficient in terms:
            bt[i, j] = coefficient
    assert all(terms[0][1] == 1.0 for terms in t.input_terms)  # each row starts with a plain addition
    torch.manual_seed(0)
    for _ in range(5):
        d, g = torch.randn(t.alpha, dtype=torch.float64), torch.randn(3, dtype=torch.float64)
        expected = torch.stack([d[i:i + 3] @ g for i in range(tile)])
        torch.testing.assert_close(t.output @ ((t.filter @ g) * (bt @ d)), expected, rtol=0, atol=1e-12)


def test_unknown_tile_is_an_error():
    with pytest.raises(ValueError, match=r'unknown Winograd output tile 3; choose from \[2, 4\]'):
        winograd_transforms(3)
    with pytest.raises(ValueError, match='choose from'):
        WinogradConv2d(8, 8, 3, padding=1, tile=6)


@pytest.mark.parametrize('tile', sorted(WINOGRAD_POINTS))
@pytest.mark.parametrize('shape', [(1, 64, 16, 16), (2, 96, 37, 23), (3, 80, 17, 50), (1, 128, 1, 1)])
@pytest.mark.parametrize('channels_last', [False, True])
@pytest.mark.parametrize('bias,relu', [(True, False), (False, False), (True, True)])
def test_winograd_equals_direct_convolution(tile, shape, channels_last, bias, relu):
    torch.manual_seed(0)
    x = torch.randn(*shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(72, shape[1], 3, 3) * 0.05
    b = torch.randn(72) if bias else None
    got = winograd_conv3x3(x, winograd_filter(weight, tile), b, relu)
    expected = F.conv2d(x, weight, b, padding=1)
    if relu:
        expected = F.relu(expected)
    assert got.shape == expected.shape
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert relative_error(got, expected) < 1e-5


def test_float32_error_is_at_the_scale_of_float32_rounding():
    """Against float64, Winograd in float32 errs by float32 rounding, as the direct float32 convolution does, the
    larger tile more. Measured, as a fraction of the output's scale: direct 1.5-1.8e-6 (oneDNN on AVX2) and 1.8e-7
    (on AVX-512, which accumulates differently), F(2x2, 3x3) 3.7e-7, F(4x4, 3x3) 2.1-3e-6; so the bounds are in
    units of float32's epsilon, not of one machine's direct kernel."""
    torch.manual_seed(0)
    x = torch.randn(1, 256, 26, 30).relu()
    weight = torch.randn(64, 256, 3, 3) * (2 / (9 * 256)) ** 0.5
    expected = F.conv2d(x.double(), weight.double(), padding=1)
    direct = relative_error(F.conv2d(x, weight, padding=1).double(), expected)
    f2 = relative_error(winograd_conv3x3(x, winograd_filter(weight, 2)).double(), expected)
    f4 = relative_error(winograd_conv3x3(x, winograd_filter(weight, 4)).double(), expected)
    eps = torch.finfo(torch.float32).eps
    assert direct < 32 * eps and f2 < 32 * eps and f4 < 64 * eps
    assert f2 < f4


def test_default_channel_threshold_is_the_geometric_mean():
    """Measured crossover: 128->128 is no faster by Winograd, 128->256 and 160->160 are."""
    def applies(cin, cout):
        return WinogradConv2d(cin, cout, 3, padding=1).winograd_tile(torch.randn(1, cin, 32, 32)) is not None
    with torch.inference_mode():
        assert not applies(128, 128) and not applies(64, 256)
        assert applies(128, 256) and applies(160, 160) and applies(256, 256)


def test_large_batches_take_the_4x4_tile_and_small_ones_the_2x2():
    """The switches count the pixels of the whole batch (the GEMMs' rows): Mask R-CNN's 100 RoIs of 14x14 too."""
    conv = WinogradConv2d(256, 256, 3, padding=1)
    with torch.inference_mode():
        assert conv.winograd_tile(torch.randn(1, 256, 25, 42)) == 4  # 1050 pixels
        assert conv.winograd_tile(torch.randn(1, 256, 13, 21)) == 2  # 273
        assert conv.winograd_tile(torch.randn(1, 256, 7, 11)) is None  # below min_pixels: direct
        assert conv.winograd_tile(torch.randn(100, 256, 14, 14)) == 4  # 19600
        assert conv.winograd_tile(torch.randn(4, 256, 14, 14)) == 2  # 784
        assert conv.winograd_tile(torch.randn(1, 256, 14, 14)) is None  # 196
        assert WinogradConv2d(256, 256, 3, padding=1, tile=2).winograd_tile(torch.randn(1, 256, 25, 42)) == 2


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


def test_cached_filters_per_tile_and_dtype_follow_swapped_weights_and_mode_switches():
    conv = WinogradConv2d.from_conv(nn.Conv2d(64, 64, 3, padding=1).eval(), min_channels=64)
    with torch.no_grad():
        f4, f2 = conv.transformed_filters(4), conv.transformed_filters(2)
        assert f4.shape[0] == 36 and f2.shape[0] == 16
        assert conv.transformed_filters(4) is f4 and conv.transformed_filters(2) is f2  # kept
        assert conv.transformed_filters(2, torch.bfloat16).dtype == torch.bfloat16
        conv.weight.data = conv.weight.data * 2  # swapped, no version bump on the parameter
        torch.testing.assert_close(conv.transformed_filters(4), 2 * f4)
        x = torch.randn(1, 64, 24, 24)
        assert relative_error(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1)) < 1e-5
    conv.train(False)  # a mode switch drops every cached transform (EMA hooks swap weights, then switch)
    assert conv._filters == {}
    clone = copy.deepcopy(conv)
    with torch.no_grad():
        torch.testing.assert_close(clone.transformed_filters(4), 2 * f4)


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


def _unit_scale_conv() -> tuple[torch.nn.Conv2d, torch.Tensor, torch.Tensor]:
    """A 256-channel 3x3 conv with unit-scale outputs, a channels-last input of 2080 pixels, and the float64 output."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(3.0)
    x = torch.randn(1, 256, 40, 52).relu().contiguous(memory_format=torch.channels_last)
    return conv, x, F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)


def test_bfloat16_takes_the_2x2_tile_only_and_stays_close():
    """On bfloat16 weights (deployed with bfloat16=True) F(2x2, 3x3) errs about twice as much as the direct bfloat16
    conv (5.3e-3 against 2.9e-3 of the output's norm, measured); F(4x4) would err 2.1e-2, so it never runs there."""
    conv, x, expected = _unit_scale_conv()
    wino = WinogradConv2d.from_conv(conv).bfloat16()
    with torch.inference_mode():
        assert wino.winograd_tile(x.bfloat16()) == 2  # 2080 pixels: F(4x4) in float32
        assert wino.winograd_tile(x) is None  # float32 input, bfloat16 weights (autocast's case): direct conv
        got = wino(x.bfloat16())
        direct = F.conv2d(x.bfloat16(), wino.weight, wino.bias, padding=1)
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    error, direct_error = norm_relative_error(got, expected), norm_relative_error(direct, expected)
    assert error < 3 * direct_error and error < 1e-2


def test_cpu_autocast_computes_in_its_dtype_with_the_2x2_tile():
    """Under CPU autocast a float32 WinogradConv2d computes as autocast computes the direct conv, in bfloat16, and so
    by F(2x2, 3x3) only. Before, F(4x4, 3x3) ran in float32 with autocast's bfloat16 GEMMs inside: 2.0e-2 of the
    output's norm off, 7x the direct bfloat16 conv's error (measured, 256 channels at 50x84)."""
    conv, x, expected = _unit_scale_conv()
    wino = WinogradConv2d.from_conv(conv)
    with torch.inference_mode():
        with torch.autocast('cpu', torch.bfloat16):
            assert wino.winograd_tile(x) == 2
            got = wino(x)
            direct = conv(x)
        assert wino.winograd_tile(x) == 4  # float32 again, with its own cached filters
        got32 = wino(x)
        small = x[:, :, :16, :24]  # 384 pixels: F(2x2) in float32, not with the bfloat16 filters of that tile
        assert wino.winograd_tile(small) == 2
        small32 = wino(small)
    assert got.dtype == direct.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    error, direct_error = norm_relative_error(got, expected), norm_relative_error(direct, expected)
    assert error < 3 * direct_error and error < 1e-2
    assert norm_relative_error(got32, expected) < 1e-5
    small_expected = F.conv2d(small.double(), conv.weight.double(), conv.bias.double(), padding=1)
    assert norm_relative_error(small32, small_expected) < 1e-5

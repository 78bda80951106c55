"""SeparableRoIAlign against mmcv's RoIAlign: same values (float rounding) for every sampling rule and layout."""
import pytest
import torch
from mmcv.ops import RoIAlign

from evit_mm.models.roi_align import SeparableRoIAlign, convert_roi_aligns, roi_align_separable


def _rois(count: int, height: int, width: int, images: int, seed: int = 0) -> torch.Tensor:
    """Boxes in image pixels (4x the map), some reaching beyond the image, some tiny, some of zero size."""
    gen = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, generator=gen) * torch.tensor([width * 4 * 1.2, height * 4 * 1.2]) - 20
    sizes = torch.rand(count, 2, generator=gen) * torch.tensor([width * 4, height * 4]) * 0.6
    sizes[:10] *= 0.01
    sizes[10:15] = 0
    batch = torch.randint(0, images, (count, 1), generator=gen).float()
    return torch.cat([batch, corners, corners + sizes], dim=1)


@pytest.mark.parametrize('aligned', [True, False])
@pytest.mark.parametrize('sampling_ratio', [0, 2])
@pytest.mark.parametrize('output_size', [(7, 7), (14, 14), (7, 5)])
@pytest.mark.parametrize('layout', [torch.channels_last, torch.contiguous_format], ids=['NHWC', 'NCHW'])
def test_matches_mmcv_forward_and_backward(aligned, sampling_ratio, output_size, layout):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 32, 37, 53, generator=gen)
    rois = _rois(200, 37, 53, images=2)
    grad_out = torch.randn(200, 32, *output_size, generator=gen)
    reference = x.clone().requires_grad_()
    expected = RoIAlign(output_size, 0.25, sampling_ratio, 'avg', aligned)(reference, rois)
    (expected * grad_out).sum().backward()
    features = x.contiguous(memory_format=layout).requires_grad_()
    got = roi_align_separable(features, rois, output_size, 0.25, sampling_ratio, aligned)
    (got * grad_out).sum().backward()
    assert got.shape == expected.shape
    assert expected.abs().max() > 0.1 and (expected[10:15] == 0).all() == (got[10:15] == 0).all()
    assert (got - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert reference.grad.abs().max() > 0.1
    assert (features.grad - reference.grad).abs().max() <= 1e-5 * reference.grad.abs().max()


def test_module_takes_the_fast_path_only_where_it_applies():
    layer = SeparableRoIAlign((7, 7), 0.125, 0, 'avg', True)
    x, rois = torch.randn(1, 16, 20, 30), _rois(30, 20, 30, images=1)
    assert layer.fast_path(x) and layer.fast_path(x.requires_grad_())  # training too
    assert not layer.fast_path(x.double())
    assert not SeparableRoIAlign((7, 7), 0.125, 0, 'max', True).fast_path(x)
    traced = torch.jit.trace(lambda f: layer(f, rois), x.detach())  # graphs keep mmcv's op (and its ONNX symbolic)
    assert any('RoIAlign' in str(node) for node in traced.graph.nodes())
    with torch.no_grad():
        torch.testing.assert_close(layer(x, rois), RoIAlign((7, 7), 0.125, 0, 'avg', True)(x, rois),
                                   rtol=0, atol=1e-5)


def test_convert_replaces_every_mmcv_roi_align():
    model = torch.nn.ModuleDict({'bbox': torch.nn.ModuleList([RoIAlign(7, 0.25), RoIAlign(7, 0.125)]),
                                 'mask': torch.nn.ModuleList([RoIAlign(14, 0.25, sampling_ratio=2, aligned=False)])})
    assert convert_roi_aligns(model) == 3
    converted = model['mask'][0]
    assert type(converted) is SeparableRoIAlign
    assert (converted.output_size, converted.spatial_scale, converted.sampling_ratio, converted.aligned) == (
        (14, 14), 0.25, 2, False)
    assert convert_roi_aligns(model) == 0  # already converted


@pytest.mark.parametrize('inside_autocast', [False, True], ids=['plain', 'backward-inside-autocast'])
def test_bfloat16_features_take_the_fast_path_with_float32_geometry(inside_autocast):
    """Under CPU autocast the features are bfloat16: sampled in bfloat16 (products within bfloat16's rounding of
    mmcv's float32 result on the same values), the sampling positions in float32 (in bfloat16, x = 150 on this map
    would be resolved to 1 pixel only), the gradient summed over the overlapping RoIs in float32 and rounded once;
    also where the backward pass runs inside the autocast region too (its float32 sums are not cast down)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 64, 100, 168, generator=gen).bfloat16()
    rois = _rois(300, 100, 168, images=1, seed=4)
    grad_out = torch.randn(300, 64, 7, 7, generator=gen)
    reference = x.float().requires_grad_()
    expected = RoIAlign((7, 7), 0.25, 0, 'avg', True)(reference, rois)
    (expected * grad_out).sum().backward()
    layer = SeparableRoIAlign((7, 7), 0.25, 0, 'avg', True)
    features = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert layer.fast_path(features)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=inside_autocast):
        got = layer(features, rois)
        (got.float() * grad_out).sum().backward()
    assert got.dtype == features.grad.dtype == torch.bfloat16

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return ((a.double() - b.double()).norm() / b.double().norm()).item()

    assert error(got, expected) < 1e-2  # 3.3e-3 measured; 0.53 with the sampling positions in bfloat16
    assert error(features.grad, reference.grad) < 4e-3  # 2.3e-3 measured; 5.6e-3 summed in bfloat16

"""EfficientViT reproduces the official code (golden data) and timm, from the same weights."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from evit_mm.benchmark.backbone import build_pair, timm_features_key
from evit_mm.benchmark.precision import autocast, exact_float32
from evit_mm.checkpoint import load_pretrained, to_backbone_state_dict
from evit_mm.models import EfficientViT
from evit_mm.models.backbones import ARCH_SETTINGS, CLASSIFICATION_WINDOWS
from tests.helpers import DEVICES, REQUIRES_CUDA, randomize_

ATOL = 1e-4


@pytest.mark.parametrize('arch', ['m0', 'm4'])
def test_official_classification_geometry_matches_golden(golden_dir, tmp_path, arch):
    golden = torch.load(golden_dir / f'efficientvit_{arch}_golden.pt', weights_only=True)
    model = EfficientViT(arch, window_size=CLASSIFICATION_WINDOWS,
                         init_cfg=dict(type='Pretrained',
                                       checkpoint=str(golden_dir / f'efficientvit_{arch}_random.pth')))
    model.init_weights()
    model.eval()
    with torch.no_grad():
        feats = model(golden['input_224'])
    assert len(feats) == len(golden['feats_224']) == 3
    for ours, ref in zip(feats, golden['feats_224']):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize('arch', ['m0', 'm4'])
@pytest.mark.parametrize('size', ['384x512', '333x517'])
def test_official_dense_geometry_matches_golden(golden_dir, arch, size):
    golden = torch.load(golden_dir / f'efficientvit_{arch}_golden.pt', weights_only=True)
    dense = golden['dense'][size]
    model = EfficientViT(arch)  # default: 7x7 windows everywhere, stage-3 bias tables resized on load
    load_pretrained(model, golden_dir / f'efficientvit_{arch}_random.pth')
    model.eval()
    with torch.no_grad():
        feats = model(dense['input'])
    for ours, ref in zip(feats, dense['feats']):
        assert ours.shape == ref.shape
        torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def _timm_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return model.forward_intermediates(x, intermediates_only=True)


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
def test_matches_timm_classification_geometry(arch):
    ref = randomize_(timm.create_model(f'efficientvit_{arch}', pretrained=False), seed=1)
    ours = EfficientViT(arch, window_size=CLASSIFICATION_WINDOWS).eval()
    ours.load_state_dict(to_backbone_state_dict(ref.state_dict()))
    n_head = sum(p.numel() for n, p in ref.named_parameters() if n.startswith('head.'))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters()) - n_head
    for shape in [(2, 3, 224, 224), (1, 3, 241, 177)]:
        x = torch.randn(shape)
        with torch.no_grad():
            feats = ours(x)
        for a, b in zip(feats, _timm_features(ref, x), strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
def test_matches_timm_dense_geometry(arch, tmp_path):
    ref = randomize_(timm.create_model(f'efficientvit_{arch}', pretrained=False, img_size=448), seed=2)
    path = tmp_path / 'timm.pth'
    torch.save(ref.state_dict(), path)
    ours = EfficientViT(arch, init_cfg=dict(type='Pretrained', checkpoint=str(path)))
    ours.init_weights()
    ours.eval()
    x = torch.randn(1, 3, 337, 459)
    with torch.no_grad():
        feats = ours(x)
    for a, b in zip(feats, _timm_features(ref, x), strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-4)


def _same_weights_pair(arch: str, device: str) -> tuple[nn.Module, nn.Module, dict[str, str]]:
    """evit_mm's backbone with random weights and BN statistics, timm's features_only model with the same ones,
    both on ``device``, and the map from evit_mm's parameter names to timm's."""
    ours, reference = build_pair(arch)
    randomize_(ours)
    rename = {k: timm_features_key(k) for k in ours.state_dict()}
    reference.load_state_dict({rename[k]: v for k, v in ours.state_dict().items()})
    return ours.to(device), reference.to(device), rename


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('arch', ['m0', 'm2'])
def test_training_step_matches_timm(arch, device):
    """Train mode at an odd size against timm, an independent implementation: outputs, every gradient and the
    BatchNorm statistics after one step (covers the token-GEMM attention, the GEMM convs and the in-place
    ReLU/residual adds).

    On the CPU both run in float64. In float32 the two implementations round differently (GEMMs against oneDNN's
    convs), and one pre-activation within 1e-6 of zero then lands on the other side of a ReLU: M2 at this size
    had one such element (-1.2e-6 in float64, +2.7e-7 in float32), which moves the gradient of every layer below
    it by up to 0.5% of its scale. Float64 makes that rounding 1e-9 times smaller, so the comparison can be tight.
    """
    ours, reference, rename = _same_weights_pair(arch, device)
    dtype = torch.float64 if device == 'cpu' else torch.float32
    ours, reference = ours.to(dtype), reference.to(dtype)
    x = torch.randn(2, 3, 161, 227, device=device, dtype=dtype)
    outputs = []
    for model in (ours, reference):
        model.train()
        with exact_float32():
            features = model(x)
            sum(f.square().mean() for f in features).backward()
        outputs.append(features)
    for got, expected in zip(*outputs, strict=True):
        assert (got - expected).abs().max() <= (1e-9 if dtype == torch.float64 else 1e-4) * expected.abs().max()
    # cuDNN's backward algorithms (FFT, Winograd) round more coarsely than the CPU's: on an H200 the stem conv's
    # gradient of M2, the end of the longest chain of train-mode BatchNorm backwards, differed by 1.7e-3 of scale
    tolerance = 1e-9 if dtype == torch.float64 else 3e-3
    reference_params = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        expected = reference_params[rename[name]].grad
        # relative to the gradient's scale; some are ~0 in theory (a BN bias followed by a train-mode BN)
        error, scale = (param.grad - expected).abs().max(), expected.abs().max()
        assert error <= tolerance * scale + 1e-6, f'{name}: gradient differs by {error:.3g} (scale {scale:.3g})'
    reference_buffers = dict(reference.named_buffers())
    for name, buffer in ours.named_buffers():
        if name in rename and buffer.is_floating_point():
            torch.testing.assert_close(buffer, reference_buffers[rename[name]], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize('device', DEVICES)
def test_eval_and_deploy_match_timm_after_moving(device):
    """Eval and deploy mode at an odd size on ``device``, after the model already ran (and cached its attention
    biases) on the CPU: the cache must follow the move, and the deploy fusion must hold off the CPU kernels."""
    ours, reference, _ = _same_weights_pair('m4', 'cpu')
    x = torch.randn(1, 3, 241, 177)
    with torch.no_grad():
        ours(x)
    ours, reference, x = ours.to(device), reference.to(device), x.to(device)
    deployed = copy.deepcopy(ours).switch_to_deploy()
    with torch.no_grad(), exact_float32():
        expected = reference(x)
        for model in (ours, deployed):
            for got, ref in zip(model(x), expected, strict=True):
                assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


@pytest.mark.parametrize(('device', 'dtype'), [
    ('cpu', 'bf16'),
    *(pytest.param('cuda', dtype, marks=REQUIRES_CUDA) for dtype in ('fp16', 'bf16'))])
def test_autocast_as_accurate_as_timm(device, dtype):
    """Under autocast, evit_mm (as built and deployed) is as close to the float32 result as timm is."""
    ours, reference, _ = _same_weights_pair('m4', device)
    deployed = copy.deepcopy(ours).switch_to_deploy()
    x = torch.randn(2, 3, 224, 288, device=device)
    with torch.no_grad():
        with exact_float32():
            exact = reference(x)
        with autocast(device, dtype):
            errors = {name: [(got.float() - ref).abs().max() / ref.abs().max() for got, ref in zip(m(x), exact)]
                      for name, m in (('evit_mm', ours), ('deployed', deployed), ('timm', reference))}
    for name in ('evit_mm', 'deployed'):
        for level, (ours_error, timm_error) in enumerate(zip(errors[name], errors['timm'])):
            assert ours_error <= 2 * timm_error + 1e-3, (name, level, errors)
            assert ours_error < 5e-2, (name, level, errors)

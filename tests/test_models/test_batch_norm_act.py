"""The fused training-mode BatchNorm + ReLU / residual kernel against torch's operators."""
from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evit_mm.models import batch_norm_act as bna
from evit_mm.models.backbones.efficientvit import EfficientViT
from evit_mm.models.layers import ConvBN, ConvFFN, PatchMerging


@pytest.fixture(scope='module')
def kernels():
    built = bna.batch_norm_act_kernels()
    # not a skip: every machine that builds mmcv's ops (make setup) has the compiler this needs
    assert built is not None, 'the fused BatchNorm kernel did not build (see the warning logged above)'
    return built


def _batch_norm(channels: int, dtype: torch.dtype, seed: int = 0) -> nn.BatchNorm2d:
    generator = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
        bn.bias.copy_(torch.randn(channels, generator=generator, dtype=dtype) * 0.3)
        bn.running_mean.copy_(torch.randn(channels, generator=generator, dtype=dtype))
        bn.running_var.copy_(torch.rand(channels, generator=generator, dtype=dtype) + 0.5)
    return bn


def _map(shape: tuple[int, ...], dtype: torch.dtype, seed: int, mean: float = 0.0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=dtype) * 2 + mean).contiguous(
        memory_format=torch.channels_last)


def _run(bn: nn.BatchNorm2d, x: torch.Tensor, mode: str, fused: bool, grad_seed: int = 7):
    """Output, gradients of x, weight, bias (and residual) and the statistics after one training-mode call."""
    bn = copy.deepcopy(bn).train()
    x = x.detach().clone().requires_grad_()
    residual = _map(x.shape, x.dtype, seed=5).requires_grad_() if mode == 'residual' else None
    if fused:
        y = bna.batch_norm_act(bn, x, relu=mode == 'relu', residual=residual)
        assert y is not None, 'the kernel was expected to apply'
    else:
        y = F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, True, bn.momentum, bn.eps)
        bn.num_batches_tracked.add_(1)
        y = y.relu() if mode == 'relu' else y if residual is None else y + residual
    grad = _map(x.shape, x.dtype, seed=grad_seed)
    y.backward(grad)
    grads = [x.grad, bn.weight.grad, bn.bias.grad] + ([residual.grad] if residual is not None else [])
    return y.detach(), grads, (bn.running_mean, bn.running_var, bn.num_batches_tracked)


# (B, C, H, W): channel counts below, at and above a line of 64 elements, rows that do not fill the last line, a token
# view (H = W = 1), a single image
SHAPES = [(2, 16, 5, 7), (1, 3, 9, 11), (3, 256, 4, 5), (37, 64, 1, 1), (1, 40, 13, 6), (4, 64, 8, 8)]


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('mode', ['relu', 'residual', 'plain'])
def test_equals_torch_in_float64(kernels, shape, mode):
    bn = _batch_norm(shape[1], torch.float64)
    x = _map(shape, torch.float64, seed=1, mean=3.0)  # a mean well away from 0: the variance's cancellation
    y, grads, stats = _run(bn, x, mode, fused=True)
    y_ref, grads_ref, stats_ref = _run(bn, x, mode, fused=False)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    for name, got, expected in zip(('x', 'weight', 'bias', 'residual'), grads, grads_ref):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9, msg=f'gradient of {name}')
    for got, expected in zip(stats, stats_ref):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize('shape', [(16, 256, 14, 14), (1, 16, 100, 168)])
@pytest.mark.parametrize('mode', ['relu', 'residual'])
def test_float32_as_accurate_as_torch(kernels, shape, mode):
    """In float32 both paths round differently: against the float64 computation of the same inputs, the kernel's
    error is at most torch's own (with a margin), for the output, the gradients and the statistics."""
    bn = _batch_norm(shape[1], torch.float32)
    x = _map(shape, torch.float32, seed=2)
    exact = _run(copy.deepcopy(bn).double(), x.double(), mode, fused=False)
    fused = _run(bn, x, mode, fused=True)
    plain = _run(bn, x, mode, fused=False)

    def errors(result):
        y, grads, stats = result
        return [(got.double() - expected).abs().max().item()
                for got, expected in zip([y, *grads, *stats[:2]], [exact[0], *exact[1], *exact[2][:2]])]

    for name, ours, torchs in zip(('output', 'x grad', 'weight grad', 'bias grad', 'residual grad', 'mean', 'var'),
                                  errors(fused), errors(plain)):
        assert ours <= 2 * torchs + 1e-6, f'{name}: error {ours:.2e} against torch\'s {torchs:.2e}'


def test_relu_mask_matches_the_forward_output(kernels):
    """The backward pass recomputes the ReLU's mask from the input: it must be the forward output's, bit for bit."""
    bn = _batch_norm(32, torch.float32)
    x = _map((4, 32, 20, 20), torch.float32, seed=3).requires_grad_()
    y = bna.batch_norm_act(copy.deepcopy(bn).train(), x, relu=True)
    y.backward(torch.ones_like(y))
    # with a gradient of ones, dy is exactly the mask; the input gradient is then zero only where both vanish
    bn_ref = copy.deepcopy(bn).train()
    x_ref = x.detach().clone().requires_grad_()
    z = F.batch_norm(x_ref, bn_ref.running_mean, bn_ref.running_var, bn_ref.weight, bn_ref.bias, True, 0.1, 1e-5)
    mask = (y > 0).to(y.dtype)
    z.backward(mask)  # torch's BatchNorm backward given our mask as the ReLU's gradient
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)


def test_not_applied_where_torch_must_run(kernels):
    x = _map((2, 8, 4, 4), torch.float32, seed=0)
    bn = _batch_norm(8, torch.float32).train()
    assert bna.batch_norm_act(bn.eval(), x) is None  # eval mode: running statistics
    bn.train()
    assert bna.batch_norm_act(bn, x.contiguous()) is None  # NCHW memory
    assert bna.batch_norm_act(bn, x.to(torch.bfloat16)) is None  # autocast's dtype
    assert bna.batch_norm_act(bn, x[:1, :, :1, :1]) is None  # one value per channel: torch's error
    sync = nn.SyncBatchNorm(8).train()
    assert bna.batch_norm_act(sync, x) is None  # statistics across processes
    hooked = copy.deepcopy(bn)
    hooked.register_forward_hook(lambda *args: None)
    assert bna.batch_norm_act(hooked, x) is None  # hooks must see the call
    cumulative = copy.deepcopy(bn)
    cumulative.momentum = None
    assert bna.batch_norm_act(cumulative, x) is None  # cumulative moving average
    assert bna.batch_norm_act(bn, x, residual=x.contiguous()) is None  # residual in another layout
    with pytest.raises(ValueError, match='either a ReLU or a residual'):
        bna.batch_norm_act(bn, x, relu=True, residual=x)


def test_a_failed_build_falls_back_with_a_warning(monkeypatch, caplog):
    import torch.utils.cpp_extension

    def no_compiler(*args, **kwargs):
        raise RuntimeError('no C++ compiler')

    bna.batch_norm_act_kernels.cache_clear()
    monkeypatch.setattr(torch.utils.cpp_extension, 'load', no_compiler)
    try:
        with caplog.at_level(logging.WARNING, logger=bna.__name__):
            bn = _batch_norm(8, torch.float32).train()
            assert bna.batch_norm_act(bn, _map((2, 8, 4, 4), torch.float32, seed=0)) is None
        assert 'could not be built' in caplog.text and 'no C++ compiler' in caplog.text
        layer = ConvBN(8, 8).train()
        x = _map((2, 8, 4, 4), torch.float32, seed=1)
        expected = layer.bn(layer.conv(x)).relu()
        torch.testing.assert_close(copy.deepcopy(layer)(x, relu=True), expected)  # torch's operators ran
    finally:
        bna.batch_norm_act_kernels.cache_clear()


def test_convbn_refuses_relu_and_residual_together():
    layer = ConvBN(4, 4)
    x = torch.randn(1, 4, 3, 3)
    with pytest.raises(ValueError, match='either a ReLU or a residual'):
        layer(x, residual=x, relu=True)


@pytest.mark.parametrize('size', [(97, 75), (131, 140)])  # stage 3 at 2x2 and 3x3: BatchNorms over 2 values
# per channel amplify any rounding difference (torch's own two-pass sums against another order) block after block
def test_backbone_training_step_equals_torch_batch_norm(kernels, size):
    """The whole backbone in training mode, float64: the same outputs, input and parameter gradients and running
    statistics with the fused kernel as with torch's BatchNorm and ReLU (every ConvBN and token BatchNorm)."""
    torch.manual_seed(0)
    model = EfficientViT(arch='m0').double().train()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):  # no zero-initialised scales: every path carries gradient
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    results = []
    for fused in (True, False):
        copy_ = copy.deepcopy(model).set_conv_bn_paths(fused_batch_norm=fused)
        image = x.clone().requires_grad_()
        outputs = copy_(image)
        weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)
                   for i, o in enumerate(outputs)]
        sum((o * w).sum() for o, w in zip(outputs, weights)).backward()
        grads = torch.cat([p.grad.flatten() for p in copy_.parameters()])
        buffers = [b.clone() for name, b in copy_.named_buffers() if 'running' in name or 'num_batches' in name]
        results.append((outputs, image.grad, grads, buffers))
    (outputs, image_grad, grads, buffers), (outputs_ref, image_grad_ref, grads_ref, buffers_ref) = results
    for got, expected in zip(outputs, outputs_ref):
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(image_grad, image_grad_ref, rtol=1e-8, atol=1e-9 * image_grad_ref.abs().max().item())
    # relative to the largest gradient: some are zero up to rounding (a bias followed by another BatchNorm)
    torch.testing.assert_close(grads, grads_ref, rtol=1e-7, atol=1e-9 * grads_ref.abs().max().item())
    for got, expected in zip(buffers, buffers_ref):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_fused_kernel_is_used_in_training(kernels, monkeypatch):
    """The backbone's training step goes through the kernel (every map and token BatchNorm), and not when switched
    off."""
    calls = []
    real = bna._BatchNormAct.apply
    monkeypatch.setattr(bna._BatchNormAct, 'apply', lambda *args: calls.append(args[7]) or real(*args))
    model = EfficientViT(arch='m0').train()
    batch_norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    model(torch.randn(2, 3, 64, 64))
    relus = 3 + sum(isinstance(m, ConvFFN) for m in model.modules()) + 2 * sum(
        isinstance(m, PatchMerging) for m in model.modules())  # the stem's, the FFNs', the patch mergings'
    assert len(calls) == batch_norms and sum(calls) == relus
    calls.clear()
    model.set_conv_bn_paths(fused_batch_norm=False)(torch.randn(2, 3, 64, 64))
    assert calls == []

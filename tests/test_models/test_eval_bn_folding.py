"""Eval-mode BatchNorm folded into the conv on the fly (ConvBN.eval_folded): same values and gradients as conv +
BatchNorm, never stale, used only where the BatchNorm is in eval mode."""
from __future__ import annotations

import copy

import pytest
import torch

from evit_mm.models import EfficientViT
from evit_mm.models.fused_conv import onednn_fusion_available
from evit_mm.models.layers import ConvBN

from tests.helpers import DEVICES, REQUIRES_CPU_FUSED_ADAMW, OpCalls, randomize_

CL = torch.channels_last
BATCH_NORM = torch.ops.aten.native_batch_norm.default
LAYERS = {  # in, out, kernel, stride, groups: every kind of ConvBN in EfficientViT
    '1x1': (12, 20, 1, 1, 1),
    'stem-3x3-s2': (32, 16, 3, 2, 1),  # >= IM2COL_MIN_IN_CHANNELS: the im2col weight gradient path
    'depthwise-3x3': (24, 24, 3, 1, 24),
    'depthwise-5x5': (16, 16, 5, 1, 16),
    '1x1-square': (20, 20, 1, 1, 1),
}
RESIDUAL_LAYERS = ['depthwise-3x3', '1x1-square']  # the ConvBNs that EfficientViT calls with a residual


def _pair(in_channels, out_channels, kernel, stride, groups, dtype=torch.float32):
    folded = randomize_(ConvBN(in_channels, out_channels, kernel, stride, kernel // 2, groups)).to(dtype)
    plain = copy.deepcopy(folded)
    plain.fold_eval_bn = False
    return folded, plain


@pytest.mark.parametrize('layout', [CL, torch.contiguous_format], ids=['channels-last', 'nchw'])
@pytest.mark.parametrize('layer, with_residual', [*((name, False) for name in LAYERS),
                                                  *((name, True) for name in RESIDUAL_LAYERS)])
def test_folded_convbn_equals_conv_then_batchnorm(layer, with_residual, layout):
    """Inference, and a frozen layer that gradients pass through to its input; the BatchNorm never runs."""
    in_channels = LAYERS[layer][0]
    folded, plain = _pair(*LAYERS[layer])
    x = torch.randn(3, in_channels, 13, 11).contiguous(memory_format=layout)
    residual = torch.randn_like(x) if with_residual else None
    with torch.no_grad():
        with OpCalls(BATCH_NORM) as seen:
            got = folded(x, residual)
        torch.testing.assert_close(got, plain(x, residual), atol=1e-5, rtol=1e-5)
    for module in (folded, plain):
        module.requires_grad_(False)
    inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    with OpCalls(BATCH_NORM) as seen_frozen:
        got = folded(inputs[0], residual)
    assert seen.calls == seen_frozen.calls == []
    expected = plain(inputs[1], residual)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad, atol=1e-4, rtol=1e-4)


def test_batchnorm_runs_where_gradients_reach_the_parameters():
    """norm_eval fine-tuning: the BatchNorm is in eval mode but its layer trains (folding measured no faster)."""
    layer, _ = _pair(*LAYERS['1x1'])
    x = torch.randn(2, 12, 5, 7)
    with OpCalls(BATCH_NORM) as seen:
        layer(x).sum().backward()
    assert len(seen.calls) == 1 and layer.conv.weight.grad is not None and layer.bn.weight.grad is not None


@pytest.mark.parametrize('context', [torch.no_grad, torch.inference_mode])
def test_folded_weights_are_cached_but_never_stale(context):
    folded, plain = _pair(*LAYERS['1x1'])
    x = torch.randn(2, 12, 5, 7).contiguous(memory_format=CL)
    replacement = randomize_(ConvBN(12, 20), seed=1).state_dict()
    batch = torch.randn(4, 20, 3, 3)

    def statistics_of_a_batch(module):  # PreciseBN-style: the BatchNorm alone in training mode (no version bump)
        module.bn.train()
        module.bn(batch)
        module.bn.eval()

    changes = [  # in place, as optimizers, EMA and checkpoint loading do
        lambda m: m.bn.running_var.mul_(1.7),
        lambda m: m.bn.running_mean.add_(0.3),
        lambda m: m.bn.weight.mul_(-2.0),
        lambda m: m.bn.bias.add_(1.0),
        lambda m: m.conv.weight.mul_(0.5),
        lambda m: m.load_state_dict(replacement),
        statistics_of_a_batch,
        lambda m: (m.conv.weight.data.mul_(0.5), m.eval()),  # .data bumps no version; a mode switch drops the cache
    ]
    with context():
        first = folded.eval_folded()
        assert folded.eval_folded()[0] is first[0]  # cached while nothing changed
    for change in changes:
        with torch.no_grad():
            change(folded)
            change(plain)
        with context():
            torch.testing.assert_close(folded(x), plain(x), atol=1e-5, rtol=1e-5)
    folded.double()
    plain.double()
    with context():
        torch.testing.assert_close(folded(x.double()), plain(x.double()), atol=1e-12, rtol=1e-12)


def test_folding_follows_the_batchnorm_mode_and_the_switch():
    folded, _ = _pair(*LAYERS['1x1'])
    x = torch.randn(2, 12, 5, 7)
    with torch.no_grad():
        assert folded.eval_folded() is not None
        folded.train()
        assert folded.eval_folded() is None and folded._fold_cache.empty  # training BatchNorm: batch statistics
        folded.bn.eval()  # norm_eval: the BatchNorm alone in eval mode
        assert folded.eval_folded() is not None
        folded.fold_eval_bn = False
        assert folded.eval_folded() is None
        with OpCalls(BATCH_NORM) as seen:
            folded(x)
        assert len(seen.calls) == 1
    folded.fold_eval_bn = True
    traced = torch.jit.trace(folded.eval(), x)  # graphs keep their BatchNorm
    assert 'batch_norm' in str(traced.inlined_graph)


def _norm_eval_step(model, x):
    outs = model(x)
    sum((o * torch.linspace(-1, 1, o.shape[1], dtype=o.dtype).view(1, -1, 1, 1)).square().mean()
        for o in outs).backward()
    return [o.detach() for o in outs]


def test_backbone_with_frozen_stages_trains_the_same_folded():
    """Whole M1 backbone in float64 at an odd size, training with norm_eval and frozen stages: the frozen stages fold
    (no BatchNorm runs there), the rest keeps its BatchNorm; features, every gradient and buffer as without folding."""
    folded = randomize_(EfficientViT('m1', norm_eval=True, frozen_stages=1)).double().train()
    plain = copy.deepcopy(folded).set_conv_bn_paths(fold_eval_bn=False)
    x = torch.randn(2, 3, 97, 131, dtype=torch.float64)
    with OpCalls(BATCH_NORM) as seen:
        got = _norm_eval_step(folded, x)
    with OpCalls(BATCH_NORM) as seen_plain:
        expected = _norm_eval_step(plain, x)
    frozen = sum(isinstance(m, ConvBN) for m in (*folded.patch_embed.modules(), *folded.stages[0].modules()))
    assert frozen > 10 and len(seen.calls) == len(seen_plain.calls) - frozen
    for u, v in zip(got, expected, strict=True):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
    grads = 0
    for (name, a), (_, b) in zip(folded.named_parameters(), plain.named_parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8, msg=name)
            grads += 1
    assert grads > 50
    for (name, a), (_, b) in zip(folded.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(a, b, atol=0, rtol=0, msg=name)


@pytest.mark.parametrize('device', DEVICES)
def test_backbone_in_eval_mode_equals_unfolded(device):
    folded = randomize_(EfficientViT('m2')).to(device).eval()
    plain = copy.deepcopy(folded).set_conv_bn_paths(fold_eval_bn=False)
    x = torch.randn(2, 3, 161, 227, device=device)
    with torch.inference_mode():
        got, expected = folded(x), plain(x)
        again = folded(x)  # from the cache
    for u, v, w in zip(got, expected, again, strict=True):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(w, u, atol=0, rtol=0)


@pytest.mark.skipif(not onednn_fusion_available(), reason='this PyTorch build has no oneDNN')
def test_eval_mode_runs_on_prepacked_folded_weights():
    """In eval mode the folded convs that oneDNN runs take weights reordered once per input shape (on its second
    call), as deployed ones do; the switch turns it off; the same features either way."""
    model = randomize_(EfficientViT('m0')).eval()
    plain = copy.deepcopy(model).set_conv_bn_paths(prepack_weights=False)
    x = torch.randn(1, 3, 83, 117)
    reorder = torch.ops.mkldnn._reorder_convolution_weight.default
    with torch.inference_mode():
        with OpCalls(reorder) as first:
            model(x)  # a new shape: plain convs
        with OpCalls(reorder) as second:
            got = model(x)  # the same shape again: packed
        with OpCalls(reorder) as third:
            model(x)
        with OpCalls(reorder) as off:
            plain(x)
            expected = plain(x)
    assert len(first.calls) == 0 and len(second.calls) > 0 and len(third.calls) == 0 and len(off.calls) == 0
    for u, v in zip(got, expected, strict=True):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)
    model.train()  # the packed copies go with the folded weights
    assert all(m._derived_weights.empty for m in model.modules() if isinstance(m, ConvBN))


@REQUIRES_CPU_FUSED_ADAMW
def test_no_stale_caches_after_fused_optimizer_steps_in_eval_mode():
    """A model kept in eval mode, trained with a fused optimizer (which bumps no version counter), then evaluated:
    the folded weights and attention-bias tables cached before the steps must not be served afterwards."""
    model = randomize_(EfficientViT('m0')).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        model(x)  # fills both caches
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.05, fused=True)
    for _ in range(2):
        sum(o.square().mean() for o in model(x)).backward()
        optimizer.step()
        optimizer.zero_grad()
    fresh = copy.deepcopy(model)  # a copy has no caches that match its tensors
    with torch.no_grad():
        for u, v in zip(model(x), fresh(x), strict=True):
            torch.testing.assert_close(u, v, atol=1e-5, rtol=1e-5)

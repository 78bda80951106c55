"""EfficientViT backbone behaviour: shapes at any size, freezing, norm_eval, checkpointing, drop path, deploy."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from mmengine.registry import MODELS as ROOT_MODELS
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from evit_mm.benchmark.precision import norm_relative_error
from evit_mm.models import EfficientViT
from evit_mm.models.attention import CascadedGroupAttention, LocalWindowAttention
from evit_mm.models.backbones import ARCH_SETTINGS, ArchSpec, ImageInputError
from tests.conftest import REPO_ROOT
from tests.helpers import DEVICES, OpCalls, randomize_


def _expected_side(size: int) -> list[int]:
    sides = []
    for _ in range(4):  # patch embedding: four 3x3 stride-2 convs, padding 1
        size = (size - 1) // 2 + 1
    sides.append(size)
    for _ in range(2):
        size = (size - 1) // 2 + 1
        sides.append(size)
    return sides


@pytest.mark.parametrize('arch', sorted(ARCH_SETTINGS))
def test_output_channels_and_strides(arch):
    model = EfficientViT(arch).eval()
    spec = ARCH_SETTINGS[arch]
    assert model.out_channels == list(spec.embed_dims)
    assert model.out_strides == [16, 32, 64]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 128, 96))
    assert [f.shape[1] for f in feats] == list(spec.embed_dims)


@pytest.mark.parametrize('hw', [(16, 16), (17, 300), (33, 47), (224, 224), (333, 517), (96, 16), (112, 112)])
def test_any_input_size(hw):
    model = randomize_(EfficientViT('m0'))
    with torch.no_grad():
        feats = model(torch.randn(2, 3, *hw))
    expected = list(zip(_expected_side(hw[0]), _expected_side(hw[1])))
    assert [tuple(f.shape[2:]) for f in feats] == expected
    assert all(torch.isfinite(f).all() for f in feats)


def test_windows_are_independent():
    """A change in one 7x7 window of the stage-1 map must not reach another window's attention output."""
    model = randomize_(EfficientViT('m0', out_indices=0))
    attn = model.stages[0].blocks[0].mixer.m
    x = torch.randn(1, 64, 14, 14)
    y = x.clone()
    y[:, :, :7, :7] += 1.0
    with torch.no_grad():
        a, b = attn(x), attn(y)
    assert not torch.allclose(a[:, :, :7, :7], b[:, :, :7, :7])
    torch.testing.assert_close(a[:, :, 7:, 7:], b[:, :, 7:, 7:])


def test_out_indices_negative_and_subset():
    model = EfficientViT('m0', out_indices=(-1, 0)).eval()
    assert model.out_indices == (0, 2)
    assert model.out_channels == [64, 192]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [64, 192]


def _custom_arch(**override) -> dict:
    """M0's numbers as a custom arch dict, with some entries replaced."""
    return dict(embed_dims=[64, 128, 192], depths=[1, 2, 3], num_heads=[4, 4, 4], kernels=[5, 5, 5, 5]) | override


@pytest.mark.parametrize('kwargs, match', [
    (dict(arch='m9'), r"Unknown EfficientViT arch 'm9'; valid choices: \['m0', 'm1'"),
    (dict(arch=dict(embed_dims=[64, 128], depths=[1, 2])), 'missing keys'),
    (dict(arch=dict(embed_dims=[64, 130, 192], depths=[1, 2, 3], num_heads=[4, 4, 4], kernels=[5] * 4)),
     'divisible by its num_heads'),
    (dict(arch=dict(embed_dims=[64], depths=[1], num_heads=[4], kernels=[5] * 4, width=3)), 'unknown keys'),
    (dict(out_indices=(3,)), r'out_indices must be non-empty ints in \[-3, 2\]'),
    (dict(out_indices=(0, -3)), 'duplicates'),
    (dict(out_indices=()), 'out_indices'),
    (dict(frozen_stages=4), r'frozen_stages must be an int in \[-1, 3\]'),
    (dict(window_size=(7, 7)), 'window_size must be'),
    (dict(window_size=0), 'window_size must be'),
    (dict(in_channels=0), 'in_channels'),
    (dict(drop_path_rate=1.0), 'drop_path_rate'),
    (dict(window_size=7.5), 'window_size must be a positive int or 3 positive ints, got 7.5'),
    (dict(window_size=True), 'window_size must be a positive int or 3 positive ints, got True'),  # was a window of 1
    (dict(window_size=(7, 7, False)), 'window_size must be'),
    (dict(arch=_custom_arch(embed_dims=[0, 128, 192])), r'embed_dims must be positive, got \(0, 128, 192\)'),
    (dict(arch=_custom_arch(embed_dims=[-64, 128, 192])), 'embed_dims must be positive'),
    (dict(arch=_custom_arch(embed_dims=[60, 128, 192], num_heads=[3, 4, 4])),
     r'embed_dims\[0\] must be divisible by 8'),
    (dict(arch=_custom_arch(kernels=[5, 5, 5, -1])), r'query kernels must be positive and odd, got \(5, 5, 5, -1\)'),
    (dict(arch=_custom_arch(kernels=[5, 5, 4, 5])), 'query kernels must be positive and odd'),
    (dict(arch=_custom_arch(kernels=[5, 5, 5])), r'kernels needs one entry per head \(4\)'),
    (dict(arch=_custom_arch(depths=[1, 0, 3])), 'depths and key_dim must be positive'),
    (dict(arch=_custom_arch(key_dim=0)), 'depths and key_dim must be positive'),
    (dict(arch=_custom_arch(depths=[1, 2])), 'need one entry per stage'),
])
def test_invalid_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EfficientViT(**kwargs)


@pytest.mark.parametrize('override, match', [
    (dict(key_dim=2.5), 'key_dim must be an int, got 2.5'),  # was truncated to 2 without a word
    (dict(key_dim=True), 'key_dim must be an int, got True'),
    (dict(kernels=5), 'kernels must be a list or tuple of ints, got 5'),
    (dict(embed_dims='64,128,192'), 'embed_dims must be a list or tuple of ints'),
    (dict(num_heads=[4, 4.0, 4]), 'num_heads must be an int, got 4.0'),
])
def test_custom_arch_with_wrong_types_raises(override, match):
    with pytest.raises(TypeError, match=f'Custom EfficientViT arch: {match}'):
        EfficientViT(arch=_custom_arch(**override))


def test_custom_arch_takes_lists_tuples_and_numpy_ints():
    arch = _custom_arch(embed_dims=np.array([64, 128, 192]).tolist(), depths=(1, 2, 3),
                        num_heads=[np.int64(4)] * 3, key_dim=np.int32(16))
    model = EfficientViT(arch=arch)
    assert model.out_channels == [64, 128, 192]
    assert model.arch == ArchSpec((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5), 16)
    assert all(type(value) is int for value in model.arch.num_heads + (model.arch.key_dim,))


def test_wrong_input_channels_and_too_small_input_raise():
    model = EfficientViT('m0', in_channels=4).eval()
    with pytest.raises(ImageInputError, match=r'expects a batch of images \(N, 4, H, W\), got shape \(1, 3, 32, 32\): '
                       r'build the backbone with in_channels=3, or convert the images'):
        model(torch.randn(1, 3, 32, 32))
    with pytest.raises(ImageInputError, match='at least 16x16'):
        model(torch.randn(1, 4, 15, 64))
    assert model(torch.randn(1, 4, 16, 16))[0].shape == (1, 64, 1, 1)


@pytest.mark.parametrize('images, message', [
    (torch.zeros(3, 32, 32), r'got one image of shape \(3, 32, 32\): add the batch dimension \(images\[None\]\)'),
    (torch.zeros(1, 1, 3, 32, 32), r'got a 5-d tensor of shape \(1, 1, 3, 32, 32\)$'),
    (torch.zeros(2, 32, 48, 3), r'got shape \(2, 32, 48, 3\): it looks channels-last \(N, H, W, C\): pass '
                                r'images.permute\(0, 3, 1, 2\)'),
    (torch.zeros(1, 3, 32, 32, dtype=torch.uint8), r'floating-point images, got torch.uint8: normalise them first'),
    (torch.zeros(1, 3, 32, 32, dtype=torch.float64), r'has torch.float32 weights but the images are torch.float64: '
                                                     r'convert one of them \(images.to\(torch.float32\) or '
                                                     r'model.to\(torch.float64\)\), or run under torch.autocast'),
    (torch.zeros(1, 3, 32, 32, device='meta'), r"is on cpu but the images are on meta: move one of them "
                                               r"\(images.to\('cpu'\) or model.to\('meta'\)\)"),
])
def test_images_it_cannot_take_are_named_with_the_fix(images, message):
    """Layout, dtype and device mistakes stop with the backbone's message, not torch's ("expected scalar type Byte but
    found Float"), in training and eval mode, deployed too."""
    model = EfficientViT('m0')
    for mode in ('train', 'eval', 'deploy'):
        if mode == 'deploy':
            model.switch_to_deploy()
        model.train(mode == 'train')
        with pytest.raises(ImageInputError, match=message):
            model(images)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16, torch.float16])
def test_autocast_takes_images_of_any_dtype_it_casts(dtype):
    model = randomize_(EfficientViT('m0')).eval()
    images = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        expected = model(images)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            outputs = model(images.to(dtype))
            with pytest.raises(ImageInputError, match='images are torch.float64'):  # autocast leaves float64 alone
                model(images.double())
    assert all(out.dtype == torch.bfloat16 for out in outputs)
    assert max(norm_relative_error(out.float(), ref) for out, ref in zip(outputs, expected)) < 0.05


@pytest.mark.parametrize('side, kwargs, stage', [
    (64, {}, 2), (16, {}, 0), (32, dict(out_indices=(1, 2)), 1), (64, dict(frozen_stages=2), 2)])
def test_training_at_batch_one_with_a_one_pixel_map_names_the_stage_and_the_fix(side, kwargs, stage):
    model = EfficientViT('m0', **kwargs).train()
    with pytest.raises(ValueError, match=rf'{side}x{side} image at batch 1 gives stage {stage} \(stride '
                                         rf'{16 * 2 ** stage}\) a 1x1 map.*batch of 2.*norm_eval=True'):
        model(torch.randn(1, 3, side, side))


@pytest.mark.parametrize('side, kwargs', [
    (65, {}), (64, dict(norm_eval=True)), (64, dict(frozen_stages=3)), (64, dict(out_indices=(0, 1)))])
def test_training_at_batch_one_runs_where_every_training_batchnorm_sees_more_than_one_value(side, kwargs):
    model = EfficientViT('m0', **kwargs).train()
    image = torch.randn(1, 3, side, side, requires_grad=True)  # a gradient to compute also with every stage frozen
    model(image)[-1].sum().backward()
    assert image.grad.abs().sum() > 0
    assert model(torch.randn(2, 3, side, side))[-1].shape[0] == 2  # batch 2: BatchNorm sees two values

@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 3])
def test_frozen_stages(frozen_stages):
    model = EfficientViT('m0', frozen_stages=frozen_stages)
    model.train()
    frozen = [model.patch_embed, *model.stages[:frozen_stages]] if frozen_stages >= 0 else []
    trainable = [] if frozen_stages >= 0 else [model.patch_embed]
    trainable += list(model.stages[max(frozen_stages, 0):])
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for module in trainable:
        assert all(p.requires_grad for p in module.parameters())
        assert all(m.training for m in module.modules() if isinstance(m, _BatchNorm))


def test_norm_eval_and_train_returns_self():
    model = EfficientViT('m0', norm_eval=True)
    assert model.train() is model
    assert model.eval() is model
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert model.stages[2].blocks[0].mixer.m.attn.training
    x = torch.randn(2, 3, 64, 64)
    before = [m.running_mean.clone() for m in bns]
    model(x)
    assert all(torch.equal(a, m.running_mean) for a, m in zip(before, bns))


def test_with_cp_gives_same_gradients():
    torch.manual_seed(0)
    plain = EfficientViT('m0')
    randomize_(plain).train()
    ckpt = EfficientViT('m0', with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.train()
    x = torch.randn(2, 3, 80, 96)
    for model in (plain, ckpt):
        model.zero_grad()
        sum(f.square().mean() for f in model(x)).backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_drop_path_random_in_training_identity_in_eval():
    model = EfficientViT('m0', drop_path_rate=0.5)
    randomize_(model)
    x = torch.randn(4, 3, 64, 64)
    model.train()
    torch.manual_seed(1)
    a = model(x)[-1]
    torch.manual_seed(2)
    b = model(x)[-1]
    assert not torch.allclose(a, b)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[-1], model(x)[-1])
    dpr = [getattr(blk.mixer.drop_path, 'drop_prob', 0.0) for stage in model.stages for blk in stage.blocks]
    assert dpr == sorted(dpr) and dpr[0] == 0.0 and dpr[-1] == pytest.approx(0.5)


def test_eval_bias_cache_sees_new_weights():
    """The official code's cached bias table ignores weights loaded after .eval(); ours must not."""
    model = randomize_(EfficientViT('m0'))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)[0]
        state = model.state_dict()
        for k in state:
            if k.endswith('attention_biases'):
                state[k] = state[k] + torch.randn_like(state[k])  # softmax ignores a constant shift
        model.load_state_dict(state)
        after = model(x)[0]
    assert not torch.allclose(before, after)


def test_bias_table_is_not_cached_in_training_mode():
    """A forward without gradients in training mode (a teacher or EMA pass, validation without ``.eval()``) must not
    keep the gathered table: fused optimizers update the parameter in place without a version bump, so a cached
    table would be served stale after the step (written here through ``.data``, which bumps no version either)."""
    attn = CascadedGroupAttention(dim=32, key_dim=8, num_heads=2, window_size=4, kernels=(3, 3)).train()
    x = torch.randn(2, 32, 4, 4)
    with torch.no_grad():
        attn(x)
        attn.attention_biases.data.add_(torch.randn_like(attn.attention_biases))
        table = attn.attention_bias()
    assert torch.equal(table, attn.attention_biases[:, attn.attention_bias_idxs])


def test_registered_in_all_scopes():
    from mmdet.registry import MODELS as DET_MODELS
    from mmseg.registry import MODELS as SEG_MODELS
    for registry in (DET_MODELS, SEG_MODELS, ROOT_MODELS):
        assert registry.get('EfficientViT') is EfficientViT
    assert DET_MODELS.get('evit_mm.EfficientViT') is EfficientViT
    assert isinstance(SEG_MODELS.build(dict(type='EfficientViT', arch='m0')), EfficientViT)


@pytest.mark.parametrize('config', ['retinanet_evit_m4.py', 'fpn_evit_m4_ade20k.py', 'evit_m4_in1k.py'])
def test_the_configs_exempt_exactly_the_attention_bias_tables_from_weight_decay(config):
    """The official recipes put no weight decay on the attention-bias tables: the configs' paramwise custom key
    must reach each table (one per attention block) and nothing else, through mmengine's optimizer constructor."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    cfg = Config.fromfile(str(REPO_ROOT / 'configs' / config))
    backbone = nn.Module()
    backbone.backbone = EfficientViT('m0')  # the name the configs' models give it
    groups = build_optim_wrapper(backbone, cfg.optim_wrapper).optimizer.param_groups
    names = {id(p): n for n, p in backbone.named_parameters()}
    undecayed = {names[id(p)] for g in groups if g['weight_decay'] == 0 for p in g['params']}
    tables = {n for n, _ in backbone.named_parameters() if n.endswith('.attention_biases')}
    assert len(tables) == sum(backbone.backbone.arch.depths) and undecayed >= tables
    assert not {n for n in undecayed - tables if not n.endswith(('.bias', 'bn.weight'))}  # only norm/bias extras


@pytest.mark.parametrize('training', [False, True])
def test_channels_last_path_matches_contiguous_path(training):
    fast = randomize_(EfficientViT('m0'))
    plain = EfficientViT('m0', channels_last=False)
    plain.load_state_dict(fast.state_dict())
    # training: BatchNorm uses batch statistics, ill-conditioned on 1x1 maps; use maps large enough for them
    x = torch.randn(2, 3, 193, 257) if training else torch.randn(2, 3, 101, 77)
    for model in (fast, plain):
        model.train(training)
    torch.manual_seed(0)
    a = fast(x)
    torch.manual_seed(0)
    b = plain(x)
    assert a[0].is_contiguous(memory_format=torch.channels_last)
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)  # training: BN batch statistics round differently


@pytest.mark.parametrize('arch', ['m0', 'm1'])
@pytest.mark.parametrize('training', [False, True])
def test_fast_attention_matches_reference_path(arch, training):
    """Token-GEMM attention == reference NCHW attention: outputs, gradients, BatchNorm running statistics.

    In float64: the fast backbone's GEMMs round differently from oneDNN's convs, and in float32 a pre-activation
    within 1e-6 of zero can land on the other side of a ReLU (see test_training_step_matches_timm)."""
    fast = randomize_(EfficientViT(arch)).double()
    ref = EfficientViT(arch, fast_attention=False, channels_last=False).double()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 193, 257) if training else torch.randn(2, 3, 101, 77)
    x = x.double()
    for model in (fast, ref):
        model.train(training)
        model.zero_grad()
    outs = []
    for model in (fast, ref):
        feats = model(x)
        if training:
            sum(f.square().mean() for f in feats).backward()
        outs.append(feats)
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-4)
    if training:
        for (name, a), (_, b) in zip(fast.named_parameters(), ref.named_parameters()):
            torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=name)
        for (name, a), (_, b) in zip(fast.named_buffers(), ref.named_buffers()):
            if a.is_floating_point() or name.endswith('num_batches_tracked'):
                torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4, msg=name)


def _image_view(kind: str, base: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
    """An image of the given size taken from ``base`` as a view with odd strides, as crops and pipelines make them."""
    if kind == 'crop':
        return base[1:batch + 1, 1:4, 2:height + 2, 3:width + 3]
    if kind == 'expanded':  # one image repeated over the batch: stride 0
        return base[:1, :3, :height, :width].expand(batch, 3, height, width)
    if kind == 'transposed':
        return base[:batch, :3, :width, :height].transpose(2, 3)
    return base[:batch, :3, :height, :width].contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize('kind', ['crop', 'expanded', 'transposed', 'channels-last'])
@pytest.mark.parametrize('training', [False, True])
def test_fast_paths_match_reference_on_image_views_with_input_gradients(kind, training):
    """The default paths (token attention, channels-last maps, the image's copy, GEMM convs) against the reference
    (NCHW, no fast path) on images that are views with odd strides, with the gradient reaching the image (saliency,
    adversarial training): outputs and image gradients in float64."""
    fast = randomize_(EfficientViT('m0', window_size=(7, 5, 3), gemm_convs=True)).double().train(training)
    ref = EfficientViT('m0', window_size=(7, 5, 3), fast_attention=False, channels_last=False, gemm_convs=False,
                       fold_eval_bn=False).double().train(training)
    ref.load_state_dict(fast.state_dict())
    # large enough that training-mode BatchNorm is well conditioned also for a batch of one repeated image
    base = torch.randn(3, 5, 210, 210, dtype=torch.float64)
    results = []
    for model in (fast, ref):
        leaf = base.clone().requires_grad_(True)
        feats = model(_image_view(kind, leaf, 2, 201, 167))
        weights = torch.Generator().manual_seed(1)
        sum((f * torch.randn(f.shape, generator=weights, dtype=f.dtype)).sum() for f in feats).backward()
        results.append((feats, leaf.grad))
    (feats_fast, grad_fast), (feats_ref, grad_ref) = results
    for u, v in zip(feats_fast, feats_ref):
        torch.testing.assert_close(u, v, atol=1e-9, rtol=1e-9)
    assert grad_ref.abs().sum() > 0
    torch.testing.assert_close(grad_fast, grad_ref, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('fast', [True, False], ids=['token-path', 'reference-path'])
@pytest.mark.parametrize('side', [4, 3], ids=['one-window', 'one-padded-window'])
def test_attention_gradients_with_one_window_in_the_batch(fast, side, device):
    """Both attention paths in training mode, in float64, where the whole batch is one window: the input gradient
    is the numerical one (gradcheck), and every parameter gradient is the other path's.

    With one window, the query's gradient reaches its BatchNorm as a channels-last view with a batch stride of
    its own, while the BatchNorm's input is NCHW: torch's CPU BatchNorm backward (2.14.1) reads such a mixed pair
    wrongly (:func:`evit_mm.models.grad_layout.grad_in_layout`); the reference path, timm's and the official code
    then got gradients unrelated to the true ones."""
    torch.manual_seed(0)
    layers = []
    for path in (fast, not fast):
        layer = randomize_(LocalWindowAttention(32, 4, 2, 4, [3, 3], fast=path)).double().train()
        layers.append(layer.to(device))
    layers[1].load_state_dict(layers[0].state_dict())
    x = torch.randn(1, 32, side, side, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradcheck(layers[0], (x,), eps=1e-6, atol=1e-7)
    for layer in layers:
        layer.zero_grad()
        layer(x.detach()).square().sum().backward()
    for (name, a), (_, b) in zip(layers[0].named_parameters(), layers[1].named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-9, rtol=1e-9, msg=name)


def test_gradients_from_a_token_head_at_batch_one():
    """A head that reads the last map as tokens (``flatten(2).transpose(1, 2)`` and a product) sends back, at batch
    1, a channels-last gradient with a batch stride of its own; with NCHW maps (``channels_last=False``) the last
    BatchNorm's backward read it wrongly (torch's CPU kernel, :mod:`evit_mm.models.grad_layout`). Float64: the NCHW
    backbone's gradients equal the channels-last one's."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    head = torch.randn(1, 192, 5, dtype=torch.float64)
    models = [randomize_(EfficientViT('m0', channels_last=layout)).double().train() for layout in (False, True)]
    for model in models:
        last = model(x)[-1]
        (last.flatten(2).transpose(1, 2) @ head).square().sum().backward()
    for (name, a), (_, b) in zip(models[0].named_parameters(), models[1].named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-9, rtol=1e-9, msg=name)


def test_fast_attention_deployed_matches_reference():
    fast = randomize_(EfficientViT('m2'))
    ref = EfficientViT('m2', fast_attention=False)
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(1, 3, 145, 203)
    with torch.no_grad():
        expected = ref.eval()(x)
        got = fast.switch_to_deploy()(x)
    for u, v in zip(got, expected):
        assert (u - v).abs().max() <= 1e-4 * v.abs().max()


def test_attention_biases_get_gradients_in_eval_mode():
    """The eval-mode bias cache must not cut the gradient when someone trains with BatchNorm in eval mode."""
    model = randomize_(EfficientViT('m0'))  # eval mode
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))  # fills the cache
    model(torch.randn(1, 3, 64, 64))[-1].square().mean().backward()
    grad = model.stages[2].blocks[0].mixer.m.attn.attention_biases.grad
    assert grad is not None and grad.abs().sum() > 0


@pytest.mark.parametrize('training', [False, True])
@pytest.mark.parametrize('batch_limit', [10 ** 9, 10], ids=['per-token-batch', 'one-image'])
def test_pointwise_tokens_equals_convbn_on_the_map(monkeypatch, training, batch_limit):
    """Both BatchNorm views of the tokens (chosen by size) equal the ConvBN on the NCHW map: outputs, gradients,
    running statistics and counters."""
    from evit_mm.models import attention
    from evit_mm.models.layers import ConvBN
    monkeypatch.setattr(attention, 'CUDNN_BATCH_NORM_MAX_BATCH', batch_limit)
    tokens_layer = randomize_(ConvBN(12, 20)).train(training)
    map_layer = randomize_(ConvBN(12, 20)).train(training)
    map_layer.load_state_dict(tokens_layer.state_dict())
    tokens = torch.randn(3, 49, 12, requires_grad=True)  # 3 windows of 7x7 tokens
    nchw = tokens.detach().reshape(3, 7, 7, 12).permute(0, 3, 1, 2).requires_grad_()
    got = attention.pointwise_tokens(tokens_layer, tokens)
    expected = map_layer(nchw).permute(0, 2, 3, 1).reshape(3, 49, 20)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # not a sum of squares: after a BatchNorm in training mode that loss does not depend on the BatchNorm's input
    # (sum((w * xhat + b)^2) = M * (w^2 + b^2)), so the conv and input gradients were rounding noise
    weights = torch.randn(got.shape, generator=torch.Generator().manual_seed(0))
    (got * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(tokens.grad, nchw.grad.permute(0, 2, 3, 1).reshape(3, 49, 12), atol=1e-5, rtol=1e-5)
    for (name, a), (_, b) in zip(tokens_layer.named_parameters(), map_layer.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5, msg=name)
    for (name, a), (_, b) in zip(tokens_layer.named_buffers(), map_layer.named_buffers()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)


def test_backward_keeps_one_memory_layout_through_batchnorm():
    """A loss that sends back NCHW gradients (a mean) must not make BatchNorm backward mix layouts (slow on CPU)."""
    model = randomize_(EfficientViT('m0')).train()
    features = model(torch.randn(2, 3, 97, 131))
    with OpCalls(torch.ops.aten.native_batch_norm_backward.default) as seen:
        sum(f.mean() for f in features).backward()
    maps = [(grad, inp) for _, (grad, inp, *_) in seen.calls if inp.dim() == 4 and inp.shape[2] * inp.shape[3] > 1]
    assert maps
    mixed = [tuple(inp.shape) for grad, inp in maps if grad.is_contiguous(memory_format=torch.channels_last)
             != inp.is_contiguous(memory_format=torch.channels_last)]
    assert mixed == []


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('variant', ['eval', 'deploy', 'deploy, plain ops'])
def test_autocast_casts_no_weight_on_every_call(device, variant):
    """Under autocast the folded and deployed layers keep their weights, biases and attention-bias tables in
    autocast's dtype: a call casts the input image only. Autocast alone casts every weight and bias of a conv or
    linear layer, and every bias table, again on every call (257 casts per deployed M4 forward at 1x224x224 with
    plain ops, the path a GPU runs; as many for timm fused), kernels a GPU waits for at small batches. The values are
    autocast's own."""
    model = randomize_(EfficientViT('m4')).eval().to(device)
    reference = EfficientViT('m4', fast_attention=False, channels_last=False).eval().to(device)
    reference.load_state_dict(model.state_dict())
    reference.set_conv_bn_paths(fold_eval_bn=False)
    if variant == 'deploy':
        model.switch_to_deploy()
    elif variant == 'deploy, plain ops':
        model.switch_to_deploy(fused_kernels=False, prepack_weights=False)
    dtype = torch.bfloat16 if device == 'cpu' else torch.float16
    x = torch.randn(1, 3, 96, 128, device=device)
    with torch.no_grad():
        with torch.autocast(device, dtype):
            model(x)
            expected = reference(x)
        # a call in an autocast block of its own, as every inference call is (autocast's cache lasts one block)
        with OpCalls(torch.ops.aten._to_copy.default) as casts, torch.autocast(device, dtype):
            got = model(x)
    cast_shapes = [args[0].shape for _, args in casts.calls]
    weight_shapes = {p.shape for p in model.parameters()} | {
        (m.num_heads, m.window_size ** 2, m.window_size ** 2) for m in model.modules()
        if isinstance(m, CascadedGroupAttention)}  # the gathered bias tables
    assert not weight_shapes & set(cast_shapes)
    if device == 'cpu':  # the image only (CUDA autocast also casts the softmax's input and output, in fp32)
        assert cast_shapes == [x.shape]
    for g, e in zip(got, expected):
        assert g.dtype == dtype and norm_relative_error(g, e) < 2e-2

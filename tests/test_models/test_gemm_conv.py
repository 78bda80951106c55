"""Convolutions through GEMMs (evit_mm.models.gemm_conv): same values as oneDNN's conv, used only where they apply."""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F

from evit_mm.models import EfficientViT, eager_kernels
from evit_mm.models.fused_conv import FusedConv2d
from evit_mm.models.gemm_conv import IM2COL_MIN_IN_CHANNELS, im2col_weight_grad
from evit_mm.models.layers import ConvBN

from tests.helpers import OpCalls, randomize_

CL = torch.channels_last


# border rows and columns with different taps on the padding: one per side (3, 2, 1), two (3, 1, 2), with the far
# side's padding used or not (odd / even sizes), taps that see only padding (1, 1, 2), no interior at all (5x5
# kernel on a 2x3 map)
@pytest.mark.parametrize('kernel, stride, padding, size', [
    (3, 2, 1, (23, 17)), (3, 2, 1, (24, 18)), (3, 1, 1, (23, 17)), (5, 2, 2, (23, 17)), (3, 2, 0, (23, 17)),
    (2, 2, 0, (23, 17)), (3, 1, 2, (9, 8)), (3, 3, 1, (10, 11)), (1, 1, 2, (5, 4)), (5, 1, 2, (2, 3))])
def test_im2col_weight_grad_equals_the_conv_weight_grad(kernel, stride, padding, size):
    x = torch.randn(2, 6, *size).contiguous(memory_format=CL)
    weight = torch.randn(5, 6, kernel, kernel)
    grad = torch.randn_like(F.conv2d(x, weight, None, stride, padding)).contiguous(memory_format=CL)
    expected = torch.ops.aten.convolution_backward(grad, x, weight, None, (stride,) * 2, (padding,) * 2, (1, 1),
                                                   False, (0, 0), 1, (False, True, False))[1]
    got = im2col_weight_grad(grad, x, (kernel, kernel), (stride, stride), (padding, padding))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


# output 3 images x 12 rows x 9 columns, 54 im2col columns (3x3 kernel, 6 channels): one output row per chunk,
# 5 rows (chunks of 5, 5 and 2 rows), 2 images (chunks of 2 and 1 images), everything at once
@pytest.mark.parametrize('rows_per_chunk', [0, 5, 24, 100], ids=['row', '5-rows', '2-images', 'whole'])
def test_im2col_weight_grad_in_chunks_equals_the_conv_weight_grad(rows_per_chunk):
    x = torch.randn(3, 6, 23, 17).contiguous(memory_format=CL)
    weight = torch.randn(5, 6, 3, 3)
    grad = torch.randn_like(F.conv2d(x, weight, None, 2, 1)).contiguous(memory_format=CL)
    assert grad.shape[2:] == (12, 9)
    expected = torch.ops.aten.convolution_backward(grad, x, weight, None, (2, 2), (1, 1), (1, 1), False, (0, 0), 1,
                                                   (False, True, False))[1]
    chunk_elements = max(1, rows_per_chunk * 9 * 54)
    got = im2col_weight_grad(grad, x, (3, 3), (2, 2), (1, 1), chunk_elements=chunk_elements)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def _layer_pair(in_channels, out_channels, kernel, stride, training):
    fast = randomize_(ConvBN(in_channels, out_channels, kernel, stride, kernel // 2)).train(training)
    plain = randomize_(ConvBN(in_channels, out_channels, kernel, stride, kernel // 2)).train(training)
    plain.load_state_dict(fast.state_dict())
    plain.gemm_convs = False
    return fast, plain


@pytest.mark.parametrize('training', [True, False])
@pytest.mark.parametrize('in_channels, out_channels, kernel, stride',
                         [(12, 20, 1, 1), (IM2COL_MIN_IN_CHANNELS, 16, 3, 2)], ids=['1x1', 'stem-3x3-s2'])
def test_convbn_through_gemm_equals_convbn_through_conv(training, in_channels, out_channels, kernel, stride):
    """Outputs (channels-last), input and parameter gradients, running statistics and counters."""
    fast, plain = _layer_pair(in_channels, out_channels, kernel, stride, training)
    x = torch.randn(3, in_channels, 13, 11).contiguous(memory_format=CL)
    inputs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
    got, expected = fast(inputs[0]), plain(inputs[1])
    assert got.is_contiguous(memory_format=CL)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    got.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(inputs[0].grad, inputs[1].grad, atol=1e-4, rtol=1e-4)
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-4, msg=name)
    for (name, a), (_, b) in zip(fast.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)


def _convolutions(training: bool, model, x):
    """Weight shapes of the bias-free (ConvBN) convolutions whose forward, and whose weight gradient, reach aten."""
    forward, backward = torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default
    with OpCalls(forward, backward) as seen:
        if training:
            sum(f.square().mean() for f in model(x)).backward()
        else:
            with torch.no_grad():
                model(x)
    forward_weights = [tuple(args[1].shape) for op, args in seen.calls if op is forward and args[2] is None]
    weight_grads = [tuple(args[2].shape) for op, args in seen.calls
                    if op is backward and args[-1][1] and not args[-1][2]]
    return forward_weights, weight_grads


def _pointwise(shapes):
    return [s for s in shapes if s[2:] == (1, 1)]


def _dense_in_channels(shapes):
    return sorted(s[1] for s in shapes if s[2:] == (3, 3) and s[1] > 1)


@pytest.mark.parametrize('pointwise, im2col', [(True, True), (True, False), (False, True), (False, False)])
def test_backbone_routes_convs_through_gemms_only_where_they_apply(pointwise, im2col):
    """Training on channels-last CPU maps: with ``gemm_convs`` no 1x1 ConvBN conv reaches oneDNN, with
    ``im2col_weight_grads`` the dense stem convs with at least IM2COL_MIN_IN_CHANNELS inputs take no oneDNN weight
    gradient, each independently; off, and in inference with the BatchNorm unfolded, every conv is oneDNN's
    (bias-free 1x1 convs: equal either way in inference)."""
    model = randomize_(EfficientViT('m1')).train()  # stem 3 -> 16 -> 32 -> 64 -> 128
    model.set_conv_bn_paths(gemm_convs=pointwise, im2col_weight_grads=im2col)
    x = torch.randn(2, 3, 97, 131)
    forward_weights, weight_grads = _convolutions(True, model, x)
    stem_inputs = [3, 16, 32, 64]  # input channels of the four dense 3x3 convs (depthwise ones have 1)
    if pointwise:
        assert _pointwise(forward_weights) == []
    else:
        assert len(_pointwise(forward_weights)) > 20
    if im2col:
        assert _dense_in_channels(weight_grads) == [c for c in stem_inputs if c < IM2COL_MIN_IN_CHANNELS]
    else:
        assert _dense_in_channels(weight_grads) == stem_inputs
    inference_weights, _ = _convolutions(False, model.set_conv_bn_paths(fold_eval_bn=False).eval(), x)
    assert len(_pointwise(inference_weights)) > 20


def test_gemm_convs_backbone_equals_conv_backbone_in_training():
    """Whole backbone, odd input size: features, every gradient and BatchNorm buffer. In float64, where rounding
    cannot flip a ReLU (see test_training_step_matches_timm); the float32 kernels are compared layer by layer above."""
    fast = randomize_(EfficientViT('m1', gemm_convs=True)).double().train()
    plain = EfficientViT('m1', gemm_convs=False).double().train()
    plain.load_state_dict(fast.state_dict())
    x = torch.randn(2, 3, 97, 131, dtype=torch.float64)
    outs = []
    for model in (fast, plain):
        feats = model(x)
        sum(f.square().mean() for f in feats).backward()
        outs.append(feats)
    for u, v in zip(*outs):
        torch.testing.assert_close(u, v, atol=1e-10, rtol=1e-10)
    for (name, a), (_, b) in zip(fast.named_parameters(), plain.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-10, rtol=1e-8, msg=name)
    for (name, a), (_, b) in zip(fast.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10, msg=name)


CONV_BN_PATHS = ('gemm_convs', 'im2col_weight_grads', 'fused_kernels', 'fold_eval_bn', 'prepack_weights')


@pytest.mark.parametrize('path', CONV_BN_PATHS)
def test_set_conv_bn_paths_switches_one_path_of_every_convbn(path):
    model = EfficientViT('m0', gemm_convs=True).set_conv_bn_paths(**{path: False})
    layers = [m for m in model.modules() if isinstance(m, ConvBN)]
    assert layers and not any(getattr(m, path) for m in layers)
    assert all(getattr(m, other) for m in layers for other in CONV_BN_PATHS if other != path)  # None: left as it was
    assert all(getattr(m, path) for m in model.set_conv_bn_paths(**{path: True}).modules() if isinstance(m, ConvBN))
    assert not any(m.fold_eval_bn for m in EfficientViT('m0', fold_eval_bn=False).modules() if isinstance(m, ConvBN))


@pytest.mark.parametrize('vendor, capability, pointwise, others', [
    ('GenuineIntel', 'AVX2', True, True), ('AuthenticAMD', 'AVX2', True, True), (None, 'AVX2', True, True),
    ('GenuineIntel', 'AVX512', True, False), ('AuthenticAMD', 'AVX512', False, False), (None, 'AVX512', False, False),
    (None, 'DEFAULT', False, False)])
def test_own_kernels_by_default_only_on_the_cpus_where_measured_faster(monkeypatch, vendor, capability, pointwise,
                                                                     others):
    """GEMM convs in training and fused kernels once deployed: on by default only where they were faster, AVX2 CPUs,
    and for the training step's 1x1 GEMMs Intel's AVX-512 CPUs too (AMD's: oneDNN's convolutions won; elsewhere
    unmeasured); inference before deployment follows deployment. An explicit ``gemm_convs`` sets all three;
    explicit arguments always win."""
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: capability)
    monkeypatch.setattr(eager_kernels, 'cpu_vendor', lambda: vendor)
    layers = [m for m in EfficientViT('m0').modules() if isinstance(m, ConvBN)]
    assert layers and all(m.gemm_convs is pointwise and m.im2col_weight_grads is others and m.fused_kernels is others
                          for m in layers)
    for forced in (True, False):
        assert all(m.gemm_convs is forced and m.im2col_weight_grads is forced and m.fused_kernels is forced
                   for m in EfficientViT('m0', gemm_convs=forced).modules() if isinstance(m, ConvBN))
    deployed = [m for m in EfficientViT('m0').switch_to_deploy().modules() if isinstance(m, FusedConv2d)]
    assert deployed and all(m.use_fused_kernel is others for m in deployed)
    forced = EfficientViT('m0').switch_to_deploy(fused_kernels=True).modules()
    assert all(m.use_fused_kernel for m in forced if isinstance(m, FusedConv2d))


def test_own_kernel_switches_are_named():
    with pytest.raises(ValueError, match="unknown own-kernel switch 'gemm'; choose one of gemm_convs, "
                                         'im2col_weight_grads, fused_kernels'):
        eager_kernels.own_kernel_measured_faster('gemm')


@pytest.mark.parametrize('cpuinfo, vendor, model', [
    ('processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n\nprocessor\t: 1\n'
     'vendor_id\t: Other\n', 'GenuineIntel', 'Intel(R) Xeon(R) Processor'),
    ('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n', 'AuthenticAMD', 'AMD EPYC 9R14'),
    ('processor\t: 0\nCPU implementer\t: 0x41\n', None, None),  # aarch64 names no vendor_id
    (None, None, None)])  # no /proc/cpuinfo (macOS, Windows)
def test_cpu_vendor_and_description_read_linux_cpuinfo(monkeypatch, cpuinfo, vendor, model):
    def fake_open(path, *args, **kwargs):
        assert path == '/proc/cpuinfo'
        if cpuinfo is None:
            raise FileNotFoundError(path)
        return io.StringIO(cpuinfo)

    monkeypatch.setattr(eager_kernels, 'open', fake_open, raising=False)
    monkeypatch.setattr(eager_kernels, 'cpuinfo', eager_kernels.cpuinfo.__wrapped__)  # not the cached fields
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX512')
    assert eager_kernels.cpu_vendor() == vendor
    description = eager_kernels.cpu_description()
    assert description.endswith(', AVX512') and (model is None or description == f'{model}, AVX512')

"""Depthwise convs on the CPU whose input gradient is a transposed conv (evit_mm.models.depthwise_grad): strided
ones in bfloat16 with a float32 input gradient (the same forward values and weight gradient as bfloat16's kernel, the
exact input gradient rounded once), and float32 ones where torch's own kernel is slow (torch 2.1; forced here on any
torch): the same values as torch's, used only where they apply, and switchable off."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from evit_mm.models import EfficientViT, eager_kernels
from evit_mm.models import depthwise_grad
from evit_mm.models.depthwise_grad import transposed_input_grad_dtype
from evit_mm.models.layers import ConvBN

from tests.helpers import REQUIRES_CPU_AUTOCAST_FLOAT16, randomize_

CL = torch.channels_last
NODE = '_DepthwiseConvTransposedInputGradBackward'


def _nodes(output: torch.Tensor) -> list[str]:
    """Names of the autograd nodes behind ``output``."""
    seen, stack, names = set(), [output.grad_fn], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(type(node).__name__)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return names


def _step(layer: ConvBN, x: torch.Tensor, grad: torch.Tensor, fast: bool, autocast: bool):
    """Output, input gradient, conv weight gradient and autograd node names of one step of ``layer``."""
    layer.float32_depthwise_input_grad = fast
    layer.zero_grad()
    x = x.detach().requires_grad_().clone()  # not a leaf: its gradient as computed (a leaf's .grad takes its layout)
    grad_x = []
    x.register_hook(grad_x.append)
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        y = layer(x)
    y.backward(grad.to(y.dtype))
    return y.detach(), grad_x[0], layer.conv.weight.grad, _nodes(y)


# odd and even sizes (the transposed conv's output padding: 0 or 1 per side), maps smaller than the kernel, both
# layouts, autocast over float32 and plain bfloat16 tensors, training and eval mode (gradients flowing: the BatchNorm
# is not folded then), 3x3 stride 2 as in PatchMerging and 5x5 stride 3
@pytest.mark.parametrize('size, kernel, stride', [
    ((15, 17), 3, 2), ((14, 13), 3, 2), ((16, 16), 3, 2), ((2, 3), 3, 2), ((1, 1), 3, 2), ((20, 19), 5, 3)])
@pytest.mark.parametrize('layout', [CL, torch.contiguous_format], ids=['channels_last', 'nchw'])
@pytest.mark.parametrize('autocast', [True, False], ids=['autocast', 'bfloat16'])
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_same_values_as_bfloat16_and_an_input_gradient_rounded_once(size, kernel, stride, layout, autocast,
                                                                     training):
    channels, dtype = 24, torch.float32 if autocast else torch.bfloat16
    layer = randomize_(ConvBN(channels, channels, kernel, stride, kernel // 2, groups=channels)).to(dtype)
    layer.train(training)
    gen = torch.Generator().manual_seed(sum(size) + kernel)
    x = torch.randn(2, channels, *size, generator=gen).to(dtype).contiguous(memory_format=layout)
    out_size = [(s + 2 * (kernel // 2) - kernel) // stride + 1 for s in size]
    grad = torch.randn(2, channels, *out_size, generator=gen).contiguous(memory_format=layout)

    y, grad_x, grad_w, nodes = _step(layer, x, grad, fast=True, autocast=autocast)
    y_ref, grad_x_ref, grad_w_ref, nodes_ref = _step(layer, x, grad, fast=False, autocast=autocast)
    assert NODE in nodes and NODE not in nodes_ref
    assert torch.equal(y, y_ref), 'the forward pass is bfloat16\'s own conv'
    assert torch.equal(grad_w, grad_w_ref), 'the weight gradient is bfloat16\'s own kernel'
    assert grad_x.dtype == x.dtype and grad_x.is_contiguous(memory_format=layout)

    # the exact input gradient of the conv for the bfloat16 operands and the (bfloat16) gradient that reached it,
    # which is the same in both paths: their BatchNorm backward is the same
    grad_conv = _grad_into_conv(layer, x, grad, autocast)
    exact = torch.ops.aten.convolution_backward(
        grad_conv.double(), x.bfloat16().double(), layer.conv.weight.bfloat16().double(), None, (stride,) * 2,
        (kernel // 2,) * 2, (1, 1), False, (0, 0), channels, (True, False, False))[0]
    error = (grad_x.double() - exact).abs()
    assert (error <= exact.abs() * 2 ** -8 + 1e-30).all(), f'largest error {error.max().item():.2e}'


def _grad_into_conv(layer: ConvBN, x: torch.Tensor, grad: torch.Tensor, autocast: bool) -> torch.Tensor:
    """The gradient the conv's output receives from the BatchNorm in ``layer``'s reference step."""
    captured = []
    layer.float32_depthwise_input_grad = False
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        conv_out = layer.conv(x.detach())
        conv_out.register_hook(captured.append)
        y = layer.bn(conv_out)
    y.backward(grad.to(y.dtype))
    return captured[0]


def test_a_backward_pass_inside_autocast_computes_the_same():
    layer = randomize_(ConvBN(16, 16, 3, 2, 1, groups=16)).train()
    x = torch.randn(2, 16, 13, 11).contiguous(memory_format=CL)
    grads = []
    for inside in (False, True):
        xr = x.clone().requires_grad_()
        with torch.autocast('cpu', dtype=torch.bfloat16):
            y = layer(xr)
            if inside:
                y.float().sum().backward()
        if not inside:
            y.float().sum().backward()
        grads.append(xr.grad)
    assert torch.equal(*grads)


def _conv(dtype: torch.dtype = torch.bfloat16, out_channels: int = 8, groups: int = 8, stride: int = 2,
          bias: bool = False, dilation: int = 1) -> nn.Conv2d:
    """A 3x3 conv of 8 channels, by default strided depthwise and bias-free, in ``dtype``."""
    return nn.Conv2d(8, out_channels, 3, stride, 1, dilation, groups, bias).to(dtype)


F32 = torch.float32


@pytest.mark.parametrize('case, conv, dtype, autocast, grad, applies', [
    ('strided depthwise, autocast', _conv(F32), F32, torch.bfloat16, True, True),
    ('strided depthwise, bfloat16', _conv(), torch.bfloat16, None, True, True),
    ('bfloat16 input, float32 weight', _conv(F32), torch.bfloat16, None, True, False),
    ('float16 input under autocast, which casts it', _conv(F32), torch.float16, torch.bfloat16, True, True),
    ('float32', _conv(F32), F32, None, True, False),
    pytest.param('autocast to float16', _conv(F32), F32, torch.float16, True, False,
                 marks=REQUIRES_CPU_AUTOCAST_FLOAT16),
    ('float64 under autocast', _conv(torch.float64), torch.float64, torch.bfloat16, True, False),
    ('no gradient', _conv(), torch.bfloat16, None, False, False),
    ('stride 1', _conv(stride=1), torch.bfloat16, None, True, False),
    ('dense', _conv(groups=1), torch.bfloat16, None, True, False),
    ('grouped, not depthwise', _conv(groups=4), torch.bfloat16, None, True, False),
    ('channel multiplier', _conv(out_channels=16), torch.bfloat16, None, True, False),
    ('with a bias', _conv(bias=True), torch.bfloat16, None, True, False),
    ('dilated', _conv(dilation=2), torch.bfloat16, None, True, False),
])
def test_applies_only_to_strided_depthwise_convs_in_bfloat16(fast_torch_kernel, case, conv, dtype, autocast, grad,
                                                             applies):
    x = torch.randn(1, 8, 9, 9, dtype=dtype)
    with torch.autocast('cpu', dtype=autocast or torch.bfloat16, enabled=autocast is not None), \
            torch.set_grad_enabled(grad):
        expected = torch.bfloat16 if applies else None
        assert transposed_input_grad_dtype(conv, x.requires_grad_(grad)) == expected, case


def test_applies_at_stride_1_too_where_torchs_kernel_is_slow(slow_torch_kernel):
    x = torch.randn(1, 8, 9, 9, dtype=torch.bfloat16, requires_grad=True)
    assert transposed_input_grad_dtype(_conv(stride=1), x) == torch.bfloat16
    assert transposed_input_grad_dtype(_conv(stride=1), x, bfloat16=False) is None  # switched off
    assert transposed_input_grad_dtype(_conv(stride=1, groups=1), x) is None


def test_not_while_compiling(monkeypatch):
    monkeypatch.setattr(eager_kernels, 'is_compiling', lambda: True)
    x = torch.randn(1, 8, 9, 9, dtype=torch.bfloat16, requires_grad=True)
    assert transposed_input_grad_dtype(_conv(), x) is None


def _m0_training_steps(path: str, autocast: bool) -> tuple[tuple, tuple, int]:
    """Outputs, parameter gradients and autograd node names of an M0 training step at 97x131 with ConvBN's ``path``
    on, then off; and the number of depthwise ConvBNs."""
    model = randomize_(EfficientViT('m0')).train()
    x = torch.randn(2, 3, 97, 131)
    results = []
    for on in (True, False):
        model.set_conv_bn_paths(**{path: on})
        model.zero_grad()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
            outs = model(x)
        sum((o.float() * (i + 1)).mean() for i, o in enumerate(outs)).backward()
        results.append(([o.detach() for o in outs], [p.grad.clone() for p in model.parameters()], _nodes(outs[-1])))
    depthwise = [m for m in model.modules() if isinstance(m, ConvBN) and m.conv.groups > 1]
    return results[0], results[1], len(depthwise)


@pytest.mark.parametrize('slow', [False, True], ids=['fast torch kernel', 'slow torch kernel'])
def test_backbone_uses_it_under_autocast_and_can_switch_it_off(monkeypatch, slow):
    """M0 trained under CPU autocast: every PatchMerging's depthwise conv (with torch's kernel slow, every depthwise
    conv) takes the float32 input gradient, the outputs are bit-identical with it off, the gradients equal to
    bfloat16 rounding."""
    monkeypatch.setattr(depthwise_grad, 'torch_depthwise_input_grad_is_slow', lambda: slow)
    (outs, grads, nodes), (outs_ref, grads_ref, nodes_ref), depthwise = _m0_training_steps(
        'float32_depthwise_input_grad', autocast=True)
    # one per stage after the first, or every depthwise conv
    assert nodes.count(NODE) == (depthwise if slow else 2) and NODE not in nodes_ref
    for got, expected in zip(outs, outs_ref, strict=True):
        assert torch.equal(got, expected)
    for got, expected in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, expected, atol=2e-2 * expected.abs().max().item() + 1e-6, rtol=2e-2)


@pytest.fixture
def fast_torch_kernel(monkeypatch):
    """As on torch 2.14, whose kernel for the input gradient is as fast as a transposed conv."""
    monkeypatch.setattr(depthwise_grad, 'torch_depthwise_input_grad_is_slow', lambda: False)


@pytest.fixture
def slow_torch_kernel(monkeypatch):
    """As on torch 2.1, whose kernel for the input gradient measures 100-300x slower than a transposed conv."""
    monkeypatch.setattr(depthwise_grad, 'torch_depthwise_input_grad_is_slow', lambda: True)


def _float32_step(layer: ConvBN, x: torch.Tensor, grad: torch.Tensor, transposed: bool):
    """Output, input gradient, conv weight gradient and autograd node names of one float32 step of ``layer``."""
    layer.transposed_depthwise_input_grad = transposed
    layer.zero_grad()
    x = x.detach().requires_grad_().clone()
    grad_x = []
    x.register_hook(grad_x.append)
    y = layer(x)
    y.backward(grad)
    return y.detach(), grad_x[0], layer.conv.weight.grad.clone(), _nodes(y)


def _token_view(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """The attention's query: channels ``[:C]`` of ``(B, side * side, 3C)`` tokens as a ``(B, C, side, side)`` view,
    channels innermost but neither NCHW nor channels-last contiguous."""
    batch, _, width = tokens.shape
    return tokens[..., :width // 3].reshape(batch, side, side, width // 3).permute(0, 3, 1, 2)


# odd and even sizes, maps smaller than the kernel, strides 1 (the residual and query convs) and 2 (PatchMerging),
# the query's 5x5 and 7x7 kernels, training and eval mode (gradients flowing: the BatchNorm is not folded then)
@pytest.mark.parametrize('size, kernel, stride', [
    ((15, 17), 3, 1), ((7, 7), 5, 1), ((7, 7), 7, 1), ((2, 3), 3, 1), ((15, 17), 3, 2), ((14, 13), 3, 2),
    ((1, 1), 3, 2)])
@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_transposed_input_grad_gives_torchs_values(slow_torch_kernel, size, kernel, stride, training):
    channels = 16
    layer = randomize_(ConvBN(channels, channels, kernel, stride, kernel // 2, groups=channels)).train(training)
    gen = torch.Generator().manual_seed(sum(size) + kernel + stride)
    out_size = [(s + 2 * (kernel // 2) - kernel) // stride + 1 for s in size]
    grad = torch.randn(3, channels, *out_size, generator=gen).contiguous(memory_format=CL)
    maps = {'channels_last': torch.randn(3, channels, *size, generator=gen).contiguous(memory_format=CL)}
    if size[0] == size[1]:
        maps['token view'] = _token_view(torch.randn(3, size[0] * size[1], 3 * channels, generator=gen), size[0])
    for name, x in maps.items():
        y, grad_x, grad_w, nodes = _float32_step(layer, x, grad, transposed=True)
        y_ref, grad_x_ref, grad_w_ref, nodes_ref = _float32_step(layer, x, grad, transposed=False)
        assert NODE in nodes and NODE not in nodes_ref, name
        assert torch.equal(y, y_ref), f'{name}: the forward pass is torch\'s own conv'
        torch.testing.assert_close(grad_w, grad_w_ref, rtol=1e-5, atol=1e-5, msg=name)
        torch.testing.assert_close(grad_x, grad_x_ref, rtol=1e-5, atol=1e-5, msg=name)
        assert grad_x.is_contiguous(memory_format=CL), f'{name}: the gradient keeps the channels innermost'


def _cl(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, dtype=dtype).contiguous(memory_format=CL)


@pytest.mark.parametrize('case, conv, x, autocast, grad, applies', [
    ('depthwise, channels-last', _conv(F32, stride=1), _cl(2, 8, 9, 9), None, True, True),
    ('strided depthwise, channels-last', _conv(F32), _cl(2, 8, 9, 9), None, True, True),
    ("the attention's query, a view of tokens", _conv(F32, stride=1), _token_view(torch.randn(2, 49, 24), 7),
     None, True, True),
    ('NCHW', _conv(F32, stride=1), torch.randn(2, 8, 9, 9), None, True, False),
    ('bfloat16', _conv(stride=1), _cl(2, 8, 9, 9, dtype=torch.bfloat16), None, True, False),
    ('float32 under bfloat16 autocast', _conv(F32, stride=1), _cl(2, 8, 9, 9), torch.bfloat16, True, False),
    ('no gradient', _conv(F32, stride=1), _cl(2, 8, 9, 9), None, False, False),
    ('dense', _conv(F32, groups=1, stride=1), _cl(2, 8, 9, 9), None, True, False),
    ('with a bias', _conv(F32, bias=True, stride=1), _cl(2, 8, 9, 9), None, True, False),
    ('dilated', _conv(F32, dilation=2, stride=1), _cl(2, 8, 9, 9), None, True, False),
])
def test_transposed_input_grad_applies_only_to_float32_depthwise_convs(slow_torch_kernel, case, conv, x, autocast,
                                                                       grad, applies):
    with torch.autocast('cpu', dtype=autocast or torch.bfloat16, enabled=autocast is not None), \
            torch.set_grad_enabled(grad):
        expected = torch.float32 if applies else None  # the float32 case alone (the bfloat16 one: above)
        assert transposed_input_grad_dtype(conv, x.requires_grad_(grad), bfloat16=False) == expected, case


def test_transposed_input_grad_only_where_torchs_kernel_is_slow_and_not_while_compiling(monkeypatch):
    conv, x = _conv(F32, stride=1), _cl(2, 8, 9, 9).requires_grad_()
    monkeypatch.setattr(depthwise_grad, 'torch_depthwise_input_grad_is_slow', lambda: False)
    assert transposed_input_grad_dtype(conv, x) is None
    monkeypatch.setattr(depthwise_grad, 'torch_depthwise_input_grad_is_slow', lambda: True)
    assert transposed_input_grad_dtype(conv, x) == torch.float32
    assert transposed_input_grad_dtype(conv, x, float32=False) is None  # switched off
    monkeypatch.setattr(eager_kernels, 'is_compiling', lambda: True)
    assert transposed_input_grad_dtype(conv, x) is None


@pytest.mark.parametrize('torch_kernel_s, transposed_s, slow', [(0.010, 0.0001, True), (0.0002, 0.0001, False),
                                                                 (0.0004, 0.0001, False), (0.0005, 0.0001, True)])
def test_torchs_kernel_counts_as_slow_beyond_the_factor(monkeypatch, torch_kernel_s, transposed_s, slow):
    timed = iter([torch_kernel_s, transposed_s])
    monkeypatch.setattr(depthwise_grad, '_best_time', lambda call: (call(), next(timed))[1])
    depthwise_grad.torch_depthwise_input_grad_is_slow.cache_clear()
    try:
        assert depthwise_grad.torch_depthwise_input_grad_is_slow() == slow
    finally:
        depthwise_grad.torch_depthwise_input_grad_is_slow.cache_clear()  # measured anew where next asked


def test_backbone_uses_the_transposed_input_grad_where_torchs_kernel_is_slow(slow_torch_kernel):
    """M0 trained in float32: every depthwise conv (residual, PatchMerging, the attention's queries) takes the
    transposed input gradient, the outputs are bit-identical with it off and the gradients the same."""
    (outs, grads, nodes), (outs_ref, grads_ref, nodes_ref), depthwise = _m0_training_steps(
        'transposed_depthwise_input_grad', autocast=False)
    assert NODE not in nodes_ref and nodes.count(NODE) == depthwise
    for got, expected in zip(outs, outs_ref, strict=True):
        assert torch.equal(got, expected)
    for got, expected in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item() + 1e-7)

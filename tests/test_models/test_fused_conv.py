"""FusedConv2d and the deploy-time kernel fusion of the backbone: same values as the separate ops."""
import copy
import io

import pytest
import torch
import torch.nn.functional as F

from evit_mm.benchmark.precision import norm_relative_error
from evit_mm.models import EfficientViT
from evit_mm.models.fused_conv import FusedConv2d, onednn_fusion_available
from evit_mm.models.layers import ConvBN, Residual, depthwise_residual
from tests.helpers import CPU_AUTOCAST_FLOAT16, OpCalls, randomize_

needs_onednn = pytest.mark.skipif(not onednn_fusion_available(), reason='this PyTorch build has no oneDNN')


@pytest.fixture(autouse=True)
def _fused_kernel_at_any_size(monkeypatch):
    """These tests check the fused kernel's values on small maps, below the size where it is used by default."""
    monkeypatch.setattr(FusedConv2d, 'min_output_elements', 0)


def op_calls(fn, *ops) -> int:
    """How many calls of the aten/mkldnn operators ``ops`` running ``fn`` dispatches."""
    with OpCalls(*ops) as seen:
        fn()
    return len(seen.calls)


def fused_kernel_calls(fn) -> int:
    """Calls of oneDNN's fused convolution (any overload) while running ``fn``; 0 where the build has none."""
    if not onednn_fusion_available():
        fn()
        return 0
    fused = torch.ops.mkldnn._convolution_pointwise
    return op_calls(fn, *(getattr(fused, name) for name in fused.overloads()))


def make_conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, relu: bool = False,
              prepack: bool = False) -> FusedConv2d:
    """A FusedConv2d with a random bias; without prepacked weights unless asked (the tests of the fused kernel and
    the GEMM check those paths as they run where prepacking does not apply)."""
    torch.manual_seed(0)
    conv = FusedConv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True, relu=relu, prepack_weights=prepack)
    with torch.no_grad():
        conv.bias.normal_()
    return conv.eval()


@needs_onednn
@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('cin,cout,k,stride,groups', [(3, 16, 3, 2, 1), (24, 48, 1, 2, 1), (32, 32, 3, 1, 32)])
def test_relu_in_kernel_equals_conv_then_relu(channels_last, cin, cout, k, stride, groups):
    conv = make_conv(cin, cout, k, stride, groups, relu=True)
    x = torch.randn(2, cin, 37, 23)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert fused_kernel_calls(lambda: conv(x)) == 1
        got = conv(x)
    expected = F.relu(F.conv2d(x, conv.weight, conv.bias, stride, k // 2, 1, groups))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


@pytest.mark.parametrize('channels_last', [True, False])
def test_residual_is_added_to_the_conv_output(channels_last):
    """Depthwise (and any non-GEMM) conv: conv, then the residual added in place, not oneDNN's sum post-op (slower)."""
    conv = make_conv(32, 32, 3, groups=32)
    x = torch.randn(2, 32, 19, 41)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert fused_kernel_calls(lambda: conv(x, residual=x)) == 0
        got = conv(x, residual=x)
    torch.testing.assert_close(got, x + F.conv2d(x, conv.weight, conv.bias, 1, 1, 1, 32), atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last) == channels_last


GEMMS = (torch.ops.aten.addmm.default, torch.ops.aten.addmm_.default, torch.ops.aten.mm.default)


@pytest.mark.parametrize('epilogue', ['none', 'relu', 'residual'])
def test_pointwise_gemm_equals_the_conv(epilogue):
    """A 1x1 conv on a channels-last CPU map is one GEMM that starts from the bias, or from residual + bias added
    in one pass (ReLU in place): no convolution runs and no add follows the GEMM, the values are the conv's, the
    output stays channels-last."""
    conv = make_conv(24, 40, 1, relu=epilogue == 'relu')
    x = torch.randn(2, 24, 13, 9).contiguous(memory_format=torch.channels_last)
    residual = torch.randn(2, 40, 13, 9).contiguous(memory_format=torch.channels_last)
    extra = {'residual': residual} if epilogue == 'residual' else {}
    with torch.inference_mode():
        assert op_calls(lambda: conv(x, **extra), *GEMMS) == 1
        assert op_calls(lambda: conv(x, **extra), torch.ops.aten.add_.Tensor) == 0
        assert op_calls(lambda: conv(x, **extra), torch.ops.aten.convolution.default) == 0
        got = conv(x, **extra)
    expected = F.conv2d(x, conv.weight, conv.bias)
    expected = F.relu(expected) if epilogue == 'relu' else expected + residual if extra else expected
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_pointwise_gemm_only_where_it_applies():
    """NCHW maps, strided 1x1 convs and use_fused_kernel=False keep the convolution; a residual in another
    layout is added after the GEMM; the GEMM path is differentiable."""
    conv = make_conv(8, 8, 1)
    cl = torch.randn(1, 8, 5, 7).contiguous(memory_format=torch.channels_last)
    nchw = cl.contiguous()
    with torch.inference_mode():
        assert op_calls(lambda: conv(nchw), torch.ops.aten.addmm.default) == 0
        conv.use_fused_kernel = False
        assert op_calls(lambda: conv(cl), torch.ops.aten.addmm.default) == 0
        conv.use_fused_kernel = True
        torch.testing.assert_close(conv(cl, residual=nchw), nchw + F.conv2d(cl, conv.weight, conv.bias))
    strided = FusedConv2d(8, 8, 1, 2)
    with torch.inference_mode():
        assert op_calls(lambda: strided(cl), torch.ops.aten.addmm.default) == 0
    x = cl.clone().requires_grad_()
    conv(x, residual=x).sum().backward()
    reference = cl.clone().requires_grad_()
    (reference + F.conv2d(reference, conv.weight, conv.bias)).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)


def test_plain_ops_when_autograd_needs_them():
    """Conv, then the ReLU in place on its fresh output (no second map), with the gradients of the separate ops."""
    conv = make_conv(8, 8, 3, relu=True)
    x = torch.randn(1, 8, 11, 13, requires_grad=True)
    assert fused_kernel_calls(lambda: conv(x)) == 0
    assert op_calls(lambda: conv(x), torch.ops.aten.relu.default) == 0
    assert op_calls(lambda: conv(x), torch.ops.aten.relu_.default) == 1
    conv(x).sum().backward()
    reference = x.detach().clone().requires_grad_()
    F.relu(F.conv2d(reference, conv.weight, conv.bias, 1, 1)).sum().backward()
    torch.testing.assert_close(x.grad, reference.grad)


def test_plain_ops_when_switched_off_or_layouts_differ():
    conv = make_conv(8, 8, 1)
    conv.use_fused_kernel = False
    x = torch.randn(1, 8, 5, 7)
    with torch.inference_mode():
        assert fused_kernel_calls(lambda: conv(x, residual=x)) == 0
        torch.testing.assert_close(conv(x, residual=x), x + F.conv2d(x, conv.weight, conv.bias))
        conv.use_fused_kernel = True
        mixed = x.contiguous(memory_format=torch.channels_last)  # residual in another memory layout
        assert fused_kernel_calls(lambda: conv(x, residual=mixed)) == 0
        torch.testing.assert_close(conv(x, residual=mixed), x + F.conv2d(x, conv.weight, conv.bias))


@needs_onednn
def test_small_outputs_take_the_plain_ops(monkeypatch):
    monkeypatch.undo()  # the default threshold
    conv = make_conv(64, 64, 1, relu=True)
    small, large = torch.randn(1, 64, 5, 7), torch.randn(1, 64, 33, 33)  # 2240 and 69696 output elements
    with torch.inference_mode():
        assert fused_kernel_calls(lambda: conv(small)) == 0
        assert fused_kernel_calls(lambda: conv(large)) == 1
        for x in (small, large):
            torch.testing.assert_close(conv(x), F.relu(F.conv2d(x, conv.weight, conv.bias)), atol=1e-5, rtol=1e-5)


def reorders(fn) -> int:
    """Calls of oneDNN's weight reorder (prepacking) while running ``fn``."""
    return op_calls(fn, torch.ops.mkldnn._reorder_convolution_weight.default)


def channels_last(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize('cin,cout,k,stride,groups,epilogue', [
    (3, 16, 3, 2, 1, 'relu'),         # the stem's first conv
    (24, 48, 1, 1, 1, 'residual'),    # a 1x1 conv ending a residual branch
    (24, 48, 1, 2, 1, 'none'),        # strided 1x1
    (32, 32, 3, 1, 32, 'residual'),   # depthwise residual
    (16, 16, 7, 1, 16, 'none'),       # the query's depthwise conv
])
def test_prepacked_weights_equal_the_conv(cin, cout, k, stride, groups, epilogue):
    """Weights reordered once per input shape, on its second call (the first takes the plain conv), then cached; the
    values of the plain conv, channels-last out."""
    conv = make_conv(cin, cout, k, stride, groups, relu=epilogue == 'relu', prepack=True)
    conv.use_fused_kernel = False  # as on AVX-512 CPUs: the 1x1 convs through oneDNN, not the GEMM
    for shape in [(2, cin, 37, 23), (1, cin, 9, 64)]:
        x = channels_last(*shape)
        expected = F.conv2d(x, conv.weight, conv.bias, stride, k // 2, 1, groups)
        extra = {'residual': channels_last(*expected.shape)} if epilogue == 'residual' else {}
        expected = F.relu(expected) if epilogue == 'relu' else expected + extra['residual'] if extra else expected
        with torch.inference_mode():
            assert reorders(lambda: conv(x, **extra)) == 0  # a new shape: the plain conv
            assert fused_kernel_calls(lambda: conv(x, **extra)) == 1  # the same shape again: packed, then cached
            assert reorders(lambda: conv(x, **extra)) == 0
            assert fused_kernel_calls(lambda: conv(x, **extra)) == 1  # the ReLU as its post-op, no relu_ after
            assert op_calls(lambda: conv(x, **extra), torch.ops.aten.relu_.default) == 0
            got = conv(x, **extra)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
        assert got.is_contiguous(memory_format=torch.channels_last)


@needs_onednn
def test_shapes_that_alternate_are_not_repacked():
    """Packed weights serve a call whose shape repeats the previous call's: shapes that alternate run the plain conv
    and are never repacked (repacking on every change cost more than the plain convs)."""
    conv = make_conv(8, 16, 3, prepack=True)
    first, second = channels_last(1, 8, 20, 24), channels_last(1, 8, 20, 28)
    with torch.inference_mode():
        counts = [reorders(lambda: conv(x)) for x in (first, first, second, first, second, first, second)]
        assert counts == [0, 1, 0, 0, 0, 0, 0]
        assert reorders(lambda: conv(second)) == 1  # the previous call's shape again: packed for it now
        assert reorders(lambda: conv(first)) == 0  # seen once since: the plain conv
        # the pack for one shape is kept through calls with others: packed again only for another shape
        assert [reorders(lambda: conv(x)) for x in (first, second, first, first)] == [1, 0, 0, 0]
        for x in (first, second):
            torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, 1), atol=1e-5, rtol=1e-5)


@needs_onednn
@pytest.mark.parametrize('cin,cout,k,stride,groups', [(3, 16, 3, 2, 1), (32, 32, 3, 1, 32), (64, 128, 1, 1, 1)])
def test_weights_packed_for_another_shape_give_the_same_values(cin, cout, k, stride, groups):
    """What a thread racing another one on the cache of a shared model may be served: slower, never wrong."""
    conv = make_conv(cin, cout, k, stride, groups, prepack=True)
    conv.use_fused_kernel = False
    with torch.inference_mode():
        x = channels_last(16, cin, 56, 56)
        assert conv._derived_weights.get(conv, x, conv.weight) is None  # a new shape: the plain conv
        blocked = conv._derived_weights.get(conv, x, conv.weight)  # the same shape again: packed for it
        assert blocked is not None
        x = channels_last(3, cin, 9, 13)
        got = FusedConv2d._prepacked_conv(conv, x, blocked, conv.bias, False)
        expected = F.conv2d(x, conv.weight, conv.bias, stride, k // 2, 1, groups)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@needs_onednn
def test_prepacked_weights_in_bfloat16():
    """A model deployed on bfloat16 weights prepacks them too, with the values of the bfloat16 conv."""
    conv = make_conv(16, 32, 1, prepack=True).to(torch.bfloat16)
    conv.use_fused_kernel = False
    x = channels_last(2, 16, 9, 11).to(torch.bfloat16)
    with torch.inference_mode():
        assert reorders(lambda: conv(x)) == 0
        assert reorders(lambda: conv(x)) == 1
        assert reorders(lambda: conv(x)) == 0
        got = conv(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, F.conv2d(x, conv.weight, conv.bias), atol=2e-2, rtol=2e-2)


@needs_onednn
@pytest.mark.parametrize('path', ['prepacked', 'fused relu', 'gemm', 'gemm with residual', 'plain'])
def test_cpu_autocast_runs_the_conv_in_its_dtype(path):
    """Under CPU autocast every path of a deployed conv computes in autocast's dtype, as the conv it replaces would,
    and gives what it gives (a residual keeps its dtype: the sum is float32). oneDNN's own ops and the in-place GEMM
    are outside autocast: before, they ran in float32 there, at float32's speed. The float32 calls after autocast get
    float32 weights again, never the cast or packed bfloat16 ones."""
    k = 1 if path.startswith('gemm') else 3
    conv = make_conv(16, 32, k, relu=path == 'fused relu', prepack=path == 'prepacked')
    conv.use_fused_kernel = path != 'plain'
    x = channels_last(2, 16, 9, 11)
    extra = {'residual': channels_last(2, 32, 9, 11)} if path == 'gemm with residual' else {}

    def reference() -> torch.Tensor:
        y = F.conv2d(x, conv.weight, conv.bias, 1, k // 2)
        y = F.relu(y) if conv.relu else y
        return y + extra['residual'] if extra else y

    with torch.inference_mode():
        expected32 = reference()
        with torch.autocast('cpu', torch.bfloat16):
            expected = reference()
            calls = [reorders(lambda: conv(x, **extra)) for _ in range(3)]
            got = conv(x, **extra)
        assert calls == ([0, 1, 0] if path == 'prepacked' else [0, 0, 0])  # packed once, in bfloat16, and kept
        assert got.dtype == expected.dtype == (torch.float32 if extra else torch.bfloat16)
        assert norm_relative_error(got, expected) < 1e-2
        assert (got.float() - expected32).abs().max() > 1e-4  # computed in bfloat16, not in float32
        for _ in range(2):
            torch.testing.assert_close(conv(x, **extra), expected32, atol=1e-5, rtol=1e-5)
        with torch.autocast('cpu', torch.bfloat16):  # back under autocast: bfloat16 again
            assert conv(x, **extra).dtype == expected.dtype
            torch.testing.assert_close(conv(x, **extra), got)
        if not CPU_AUTOCAST_FLOAT16:
            return  # torch < 2.3: CPU autocast takes bfloat16 only
        with torch.autocast('cpu', torch.float16):  # another autocast dtype: weights cast anew, not bfloat16's
            expected16 = reference()
            got16 = [conv(x, **extra) for _ in range(2)][-1]
        torch.testing.assert_close(got16, expected16)


def test_a_weight_that_trains_drops_its_cast_copy():
    """Under autocast the cast weights are kept only while no gradient reaches them: a call that records one for
    the weight drops the kept copy (a fused optimizer may change the weight without a version bump)."""
    conv = make_conv(16, 32, 3, relu=False, prepack=False)
    x = channels_last(1, 16, 6, 7)
    with torch.autocast('cpu', torch.bfloat16):
        with torch.no_grad():
            conv(x)
        assert not conv._derived_weights.empty  # cast once and kept
        conv(x).float().sum().backward()
    assert conv._derived_weights.empty and conv.weight.grad is not None


@pytest.mark.parametrize('deployed', [False, True])
def test_backbone_under_cpu_autocast_computes_in_bfloat16(deployed):
    """In eval mode (BatchNorms folded on the fly, on prepacked weights) and deployed, CPU autocast runs the same
    kernels as float32 (before, every conv after the first bfloat16 op took the plain conv: autocast's casts, no
    prepacked weights, no fused ReLU) and gives bfloat16 features within bfloat16's error of float32, as it does for
    the reference path; float32 calls after it are exact again."""
    model = randomize_(EfficientViT('m1')).eval()
    reference = EfficientViT('m1', fast_attention=False, channels_last=False).eval()
    reference.load_state_dict(model.state_dict())
    reference.set_conv_bn_paths(fold_eval_bn=False)
    if deployed:
        model.switch_to_deploy()
    x = torch.randn(2, 3, 97, 131)
    convs = torch.ops.aten.convolution.default, torch.ops.mkldnn._convolution_pointwise.default
    with torch.no_grad():
        expected = reference(x)
        model(x), model(x)
        with OpCalls(*convs) as float32_calls:
            model(x)
        with torch.autocast('cpu', torch.bfloat16):
            reference_bf16 = reference(x)
            model(x)
            with OpCalls(*convs) as autocast_calls:  # the same kernels as in float32 (oneDNN's prepacked convs)
                got = model(x)
        again = model(x)
    assert [op for op, _ in autocast_calls.calls] == [op for op, _ in float32_calls.calls]
    for g, r, e, a in zip(got, reference_bf16, expected, again):
        assert g.dtype == torch.bfloat16
        assert norm_relative_error(g, e) < 2e-2 and norm_relative_error(r, e) < 2e-2
        torch.testing.assert_close(a, e, atol=1e-4, rtol=1e-4)


@needs_onednn
@pytest.mark.parametrize('relu', [False, True])
def test_no_onednn_ops_while_pytorch_keeps_convs_off_onednn(relu):
    """``torch.backends.mkldnn.flags(enabled=False)`` (a debugging switch) also keeps the deployed convs off oneDNN's
    own ops: neither packed nor fused, the plain conv's values."""
    conv = make_conv(16, 32, 3, relu=relu, prepack=True)
    x = channels_last(2, 16, 9, 11)
    expected = F.conv2d(x, conv.weight, conv.bias, 1, 1)
    expected = F.relu(expected) if relu else expected
    with torch.inference_mode(), torch.backends.mkldnn.flags(enabled=False):
        calls = [reorders(lambda: conv(x)) + fused_kernel_calls(lambda: conv(x)) for _ in range(3)]
        got = conv(x)
    assert calls == [0, 0, 0]
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    with torch.inference_mode():
        conv(x)
        assert fused_kernel_calls(lambda: conv(x)) == 1  # switched on again: the prepacked conv


@needs_onednn
def test_prepacked_weights_follow_new_weights():
    """Weights loaded in place, or replaced by new tensors, are packed again: never a stale copy."""
    conv = make_conv(8, 8, 3, prepack=True)
    x = channels_last(1, 8, 11, 13)
    with torch.no_grad():
        conv(x), conv(x)  # packed on the second call
        conv.load_state_dict({'weight': torch.randn_like(conv.weight), 'bias': torch.randn_like(conv.bias)})
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, 1), atol=1e-5, rtol=1e-5)
        conv.weight = torch.nn.Parameter(torch.randn_like(conv.weight))
        assert reorders(lambda: conv(x)) == 1
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, 1, 1), atol=1e-5, rtol=1e-5)


@needs_onednn
def test_prepacking_only_where_it_applies():
    """Off, NCHW maps and autograd take the plain conv; a weight that trains drops its packed copy."""
    conv = make_conv(8, 8, 3, prepack=True)
    x = channels_last(1, 8, 11, 13)
    with torch.inference_mode():
        assert reorders(lambda: conv(x.contiguous())) == 0
        conv.prepack_weights = False
        assert reorders(lambda: conv(x)) == 0
        conv.prepack_weights = True
        conv(x), conv(x)
    assert not conv._derived_weights.empty
    assert reorders(lambda: conv(x)) == 0  # grad mode, the weight requires grad: the differentiable conv
    assert conv._derived_weights.empty
    conv(x).sum().backward()
    assert conv.weight.grad is not None


@needs_onednn
def test_prepacked_conv_copies_and_pickles():
    """oneDNN's packed tensors cannot be copied or pickled: copies start without them and pack their own."""
    conv = make_conv(8, 16, 1, prepack=True)
    conv.use_fused_kernel = False
    x = channels_last(2, 8, 5, 7)
    with torch.inference_mode():
        conv(x)
        expected = conv(x)
    assert not conv._derived_weights.empty
    clone = copy.deepcopy(conv)
    assert clone._derived_weights.empty
    buffer = io.BytesIO()
    torch.save(conv, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    with torch.inference_mode():
        for other in (clone, loaded):
            torch.testing.assert_close(other(x), expected, atol=0, rtol=0)


@needs_onednn
def test_deployed_backbone_prepacks_by_default():
    """``switch_to_deploy`` prepacks (once per input shape) unless told not to; the same features either way."""
    model = randomize_(EfficientViT('m0')).eval()
    plain = copy.deepcopy(model).switch_to_deploy(prepack_weights=False)
    model.switch_to_deploy()
    x = torch.randn(1, 3, 83, 117)
    with torch.inference_mode():
        assert reorders(lambda: plain(x)) == reorders(lambda: plain(x)) == 0
        assert reorders(lambda: model(x)) == 0  # a new shape
        assert reorders(lambda: model(x)) > 0
        assert reorders(lambda: model(x)) == 0
        for got, expected in zip(model(x), plain(x)):
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_relu_and_residual_together_is_an_error():
    conv = make_conv(4, 4, 1, relu=True)
    with pytest.raises(ValueError, match='either a ReLU or a residual'):
        conv(torch.randn(1, 4, 3, 3), residual=torch.randn(1, 4, 3, 3))


@pytest.mark.parametrize('arch', ['m0', 'm3', 'm5'])
def test_switch_to_deploy_keeps_outputs(arch):
    """BatchNorm folded (no BatchNorm left), with and without the fused kernels, at an odd size."""
    model = randomize_(EfficientViT(arch))
    x = torch.randn(2, 3, 117, 171)
    with torch.inference_mode():
        expected = model(x)
        plain = copy.deepcopy(model).switch_to_deploy(fused_kernels=False, prepack_weights=False)
        fused = model.switch_to_deploy(fused_kernels=True, prepack_weights=False)
        without = plain(x)
        got = fused(x)
        if onednn_fusion_available():
            # every ReLU after a conv that is not a GEMM: the stem's 3, each patch merging's depthwise conv
            relu_convs = [m for m in fused.modules()
                          if isinstance(m, FusedConv2d) and m.relu and m.kernel_size != (1, 1)]
            assert len(relu_convs) == 3 + len(fused.stages) - 1
            assert fused_kernel_calls(lambda: fused(x)) == len(relu_convs)
        assert fused_kernel_calls(lambda: plain(x)) == 0
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert not any(isinstance(m, torch.nn.ReLU) for m in fused.patch_embed.modules())
    for g, w, e in zip(got, without, expected):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-5)
        assert (g - e).abs().max() <= 1e-4 * e.abs().max()


def deployed_residual(branch: ConvBN, drop_path: float = 0.0, relu: bool = False) -> Residual:
    """``x + branch(x)`` with random weights and statistics, its ConvBN fused (as ``switch_to_deploy`` leaves it)."""
    layer = randomize_(Residual(branch, drop_path)).eval()
    layer.m.fuse(relu=relu)
    return layer


def test_depthwise_residual_takes_the_identity_into_its_kernel():
    """Deployed ``x + DW(x)`` is one depthwise conv: same values, no add left (on any device: plain conv)."""
    layer = deployed_residual(depthwise_residual(8).m)
    x = torch.randn(2, 8, 9, 13)
    with torch.no_grad():
        expected = layer(x)
        adds = (torch.ops.aten.add.Tensor, torch.ops.aten.add_.Tensor)
        assert op_calls(lambda: layer(x), *adds) == 1
        assert layer.fold_identity() and layer.identity_in_branch
        got = layer(x)
        assert op_calls(lambda: layer(x), *adds) == 0
        assert layer.fold_identity()  # idempotent: the centre tap gains 1 once
        torch.testing.assert_close(layer(x), got, atol=0, rtol=0)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_folded_depthwise_residual_drops_paths_like_the_unfolded_one():
    """A deployed model put back in training mode still drops the branch, not the identity, per sample."""
    unfolded = deployed_residual(depthwise_residual(8).m, drop_path=0.5).train()
    folded = copy.deepcopy(unfolded)
    assert folded.fold_identity()
    x = torch.randn(8, 8, 7, 7)
    torch.manual_seed(1)
    expected = unfolded(x)
    torch.manual_seed(1)
    got = folded(x)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)
    assert (got == x).flatten(1).all(1).any(), 'drop_path=0.5 on 8 samples should have dropped one branch'


@pytest.mark.parametrize('branch, fused, relu', [
    (ConvBN(8, 8, 3, 1, 1), True, False),            # dense: the identity is not one tap per channel
    (ConvBN(8, 8, 3, 1, 1, groups=8), False, False),  # BatchNorm not folded yet
    (ConvBN(8, 8, 3, 1, 1, groups=8), True, True),    # a ReLU after the conv
    (ConvBN(8, 8, 3, 1, 0, groups=8), True, False),   # not "same" padding: output smaller than x
    (ConvBN(8, 8, 2, 1, 1, groups=8), True, False),   # even kernel: no centre tap
])
def test_identity_stays_outside_other_branches(branch, fused, relu):
    layer = randomize_(Residual(branch)).eval()
    if fused:
        layer.m.fuse(relu=relu)
    weight = layer.m.conv.weight.clone()
    assert not layer.fold_identity()
    assert not layer.identity_in_branch
    torch.testing.assert_close(layer.m.conv.weight, weight, atol=0, rtol=0)


def test_switch_to_deploy_folds_every_token_interaction_layer():
    """Two depthwise residuals per block and two per downsampling (paper Fig. 3), folded once even when
    ``switch_to_deploy`` runs twice."""
    model = randomize_(EfficientViT('m0')).eval()
    x = torch.randn(1, 3, 75, 101)
    with torch.no_grad():  # the same kernels in both calls (prepacking switches kernels from a shape's 2nd call)
        expected = model(x)
        model.switch_to_deploy(prepack_weights=False)
        once = model(x)
        model.switch_to_deploy(prepack_weights=False)
        twice = model(x)
    folded = [m for m in model.modules() if isinstance(m, Residual) and m.identity_in_branch]
    assert len(folded) == 2 * sum(model.arch.depths) + 2 * (len(model.stages) - 1)
    for e, a, b in zip(expected, once, twice):
        torch.testing.assert_close(b, a, atol=0, rtol=0)
        assert (a - e).abs().max() <= 1e-4 * e.abs().max()


def test_identity_fold_can_be_turned_off():
    model = randomize_(EfficientViT('m0')).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = copy.deepcopy(model).switch_to_deploy()(x)
        model.switch_to_deploy(fold_identities=False)
        got = model(x)
    assert not any(isinstance(m, Residual) and m.identity_in_branch for m in model.modules())
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, atol=1e-5, rtol=1e-5)


def test_deployed_backbone_trains_through_plain_ops():
    """A deployed model used with autograd (e.g. fine-tuning, attribution) runs the differentiable ops."""
    model = randomize_(EfficientViT('m0')).switch_to_deploy()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        expected = model(x)
    got = model(x)
    sum(f.sum() for f in got).backward()
    assert model.patch_embed.conv1.conv.weight.grad is not None
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.detach(), e, atol=1e-5, rtol=1e-5)

"""The channels-last copy of the input image reuses one buffer per thread on the CPU, in inference and from one
training step to the next, and never while anything else holds it (a kept result, a view, a graph not yet
backpropagated)."""
from __future__ import annotations

import threading

import pytest
import torch

from evit_mm.models import EfficientViT
from evit_mm.models import input_buffer
from evit_mm.models.input_buffer import channels_last_image


@pytest.fixture(autouse=True)
def fresh_buffer():
    input_buffer._buffers.image = None
    yield
    input_buffer._buffers.image = None


def _image(seed: int = 0) -> torch.Tensor:
    return torch.randn(2, 3, 16, 24, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize('mode', [torch.inference_mode, torch.no_grad])
def test_the_copy_reuses_the_buffer_of_the_last_call(mode):
    x = _image()
    with mode():
        first = channels_last_image(x)
        address = first.data_ptr()
        del first
        second = channels_last_image(_image(1))
    assert second.data_ptr() == address
    assert second.is_contiguous(memory_format=torch.channels_last) and torch.equal(second, _image(1))


def test_a_buffer_made_in_inference_mode_serves_no_grad_calls_and_back():
    with torch.inference_mode():
        address = channels_last_image(_image()).data_ptr()
    with torch.no_grad():  # an inference tensor could not be written here
        second = channels_last_image(_image(1))
        assert second.data_ptr() == address and torch.equal(second, _image(1))
        del second
    with torch.inference_mode():
        third = channels_last_image(_image(2))
        assert third.data_ptr() == address and torch.equal(third, _image(2))


@pytest.mark.parametrize('keep', ['tensor', 'view'])
def test_a_kept_result_is_never_overwritten(keep):
    with torch.no_grad():
        kept = channels_last_image(_image())
        if keep == 'view':
            kept = kept[:, :1]
        again = channels_last_image(_image(1))
    assert again.data_ptr() != kept.data_ptr()
    assert torch.equal(kept, _image()[:, :1] if keep == 'view' else _image())


def test_a_new_shape_or_dtype_gets_a_new_buffer():
    with torch.no_grad():
        first = channels_last_image(_image())
        address = first.data_ptr()
        del first
        other = channels_last_image(torch.randn(1, 3, 16, 24))
        assert other.shape == (1, 3, 16, 24)
        del other
        double = channels_last_image(_image().double())
    assert double.dtype == torch.float64 and torch.equal(double, _image().double())
    assert input_buffer._buffers.image.dtype == torch.float64 and address  # the float32 buffer was let go


def test_no_buffer_where_the_copy_may_be_kept_or_is_not_needed():
    x = _image()
    with torch.no_grad():
        assert torch.equal(channels_last_image(x, reuse=False), x)  # switched off
    copy = channels_last_image(x.requires_grad_())  # the gradient must reach x through the copy
    assert copy.requires_grad and copy.grad_fn is not None
    with torch.no_grad():
        x = x.detach()
        ready = x.contiguous(memory_format=torch.channels_last)
        assert channels_last_image(ready) is ready  # already channels-last: no copy at all
        assert channels_last_image(x.to('meta')).device.type == 'meta'  # not the CPU
    assert input_buffer._buffers.image is None


def test_each_thread_has_its_own_buffer():
    addresses = []

    def copy_in_thread():
        with torch.no_grad():
            addresses.append(channels_last_image(_image()).data_ptr())
            addresses.append(input_buffer._buffers.image.data_ptr())

    with torch.no_grad():
        main = channels_last_image(_image())
        thread = threading.Thread(target=copy_in_thread)
        thread.start()
        thread.join()
    assert addresses[0] == addresses[1] != main.data_ptr()
    assert input_buffer._buffers.image.data_ptr() == main.data_ptr()


def test_the_backbone_reuses_the_buffer_with_the_same_features_and_a_hook_keeps_its_input():
    model = EfficientViT('m0').eval()
    plain = EfficientViT('m0').eval()
    plain.load_state_dict(model.state_dict())
    plain.reuse_input_buffer = False
    inputs = []
    model.patch_embed.register_forward_hook(lambda module, args, output: inputs.append(args[0]))
    with torch.inference_mode():
        for seed in range(3):
            x = torch.randn(1, 3, 61, 83, generator=torch.Generator().manual_seed(seed))
            for got, expected in zip(model(x), plain(x), strict=True):
                assert torch.equal(got, expected)
    for seed, kept in enumerate(inputs):  # each call's input, untouched by the calls after it
        assert torch.equal(kept, torch.randn(1, 3, 61, 83, generator=torch.Generator().manual_seed(seed)))


def _training_model(gemm_convs: bool, reuse: bool = True) -> EfficientViT:
    torch.manual_seed(0)
    model = EfficientViT('m0').set_conv_bn_paths(gemm_convs=gemm_convs).train()
    model.reuse_input_buffer = reuse
    return model


def _gradients(model: EfficientViT) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize('gemm_convs', [False, True])  # oneDNN's convs and evit_mm's GEMM convs save their input
def test_training_steps_reuse_the_buffer_with_the_same_gradients(gemm_convs):
    model, plain = _training_model(gemm_convs), _training_model(gemm_convs, reuse=False)
    addresses = []
    for seed in range(3):
        x = torch.randn(2, 3, 61, 83, generator=torch.Generator().manual_seed(seed))
        for m in (model, plain):
            m.zero_grad(set_to_none=True)
            sum(f.square().mean() for f in m(x)).backward()
        addresses.append(input_buffer._buffers.image.data_ptr())
        for got, expected in zip(_gradients(model), _gradients(plain), strict=True):
            assert torch.equal(got, expected)
    assert addresses[0] == addresses[1] == addresses[2]  # each step's graph was freed before the next step


@pytest.mark.parametrize('gemm_convs', [False, True])
def test_a_graph_not_yet_backpropagated_keeps_its_copy(gemm_convs):
    """The first conv saves the copy for its weight gradient: a second forward pass before the first one's
    backward (or with the first graph retained) must not overwrite it."""
    model, plain = _training_model(gemm_convs), _training_model(gemm_convs, reuse=False)
    first, second = (torch.randn(2, 3, 61, 83, generator=torch.Generator().manual_seed(s)) for s in (0, 1))
    loss = sum(f.square().mean() for f in model(first))
    saved_address = input_buffer._buffers.image.data_ptr()
    model(second)  # the buffer is held by the first graph: a new one
    assert input_buffer._buffers.image.data_ptr() != saved_address
    loss.backward()
    sum(f.square().mean() for f in plain(first)).backward()
    for got, expected in zip(_gradients(model), _gradients(plain), strict=True):
        assert torch.equal(got, expected)

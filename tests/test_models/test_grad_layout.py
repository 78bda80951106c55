"""grad_in_layout: the gradient a map receives, in the map's layout, so that torch's CPU BatchNorm backward reads it."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from evit_mm.models.grad_layout import grad_in_layout, memory_format_of


def _odd_channels_last(t: torch.Tensor) -> torch.Tensor:
    """``t`` (batch 1) as a channels-last tensor whose batch stride is C, not C*H*W: what a batched product's
    backward hands back for a ``(1, N, C)`` token view of a map."""
    _, channels, height, width = t.shape
    return torch.as_strided(t.clone(memory_format=torch.channels_last), t.shape,
                            (channels, 1, width * channels, channels))


def _batch_norm_grads(x: torch.Tensor, grad: torch.Tensor, training: bool) -> tuple[torch.Tensor, ...]:
    x = x.detach().requires_grad_()
    weight = torch.linspace(0.5, 1.5, x.shape[1], dtype=x.dtype, requires_grad=True)
    stats = torch.zeros(x.shape[1], dtype=x.dtype), torch.ones(x.shape[1], dtype=x.dtype)
    y = F.batch_norm(x, *stats, weight, None, training)
    y.backward(grad)
    return x.grad, weight.grad


def test_memory_format_of():
    x = torch.randn(2, 8, 5, 6)
    assert memory_format_of(x) == torch.contiguous_format
    assert memory_format_of(x.contiguous(memory_format=torch.channels_last)) == torch.channels_last
    assert memory_format_of(torch.randn(2, 8, 1, 1).contiguous(memory_format=torch.channels_last)) == \
        torch.contiguous_format  # both at once: NCHW
    assert memory_format_of(torch.randn(3, 8)) == torch.contiguous_format


def test_odd_channels_last_gradient_reaches_an_nchw_batch_norm_in_nchw():
    """The hook copies such a gradient into the NCHW map's layout, and the BatchNorm backward on it equals the one on
    a plain NCHW gradient (fed the odd gradient itself, torch 2.14.1's CPU kernel returned unrelated values)."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    grad = torch.randn(1, 8, 4, 4, dtype=torch.float64)
    odd = _odd_channels_last(grad)
    assert torch.equal(odd, grad) and odd.stride(0) == 8
    for training in (False, True):
        expected = _batch_norm_grads(x, grad, training)
        received = []
        y = grad_in_layout(x.clone().requires_grad_())
        y.register_hook(lambda g: received.append(g))
        y.backward(odd)
        assert received[0].is_contiguous() and torch.equal(received[0], grad)
        got = _batch_norm_grads(x, received[0], training)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_channels_last_map_keeps_its_gradient_without_a_copy():
    x = torch.randn(1, 8, 4, 4).contiguous(memory_format=torch.channels_last).requires_grad_()
    odd = _odd_channels_last(torch.randn(1, 8, 4, 4))
    received = []
    y = grad_in_layout(x * 1)
    y.register_hook(lambda g: received.append(g))
    y.backward(odd)
    assert received[0].data_ptr() == odd.data_ptr()  # already channels-last: handed on as it is


def test_no_hook_without_a_gradient():
    x = torch.randn(1, 8, 4, 4)
    assert grad_in_layout(x) is x and x.grad_fn is None and not x._backward_hooks

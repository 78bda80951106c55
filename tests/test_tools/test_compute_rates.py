"""The GEMM and convolution accounting behind ``tools/benchmark_backbone.py --compute-rates``."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from evit_mm.benchmark.backbone import compute_rates_table
from evit_mm.benchmark.compute_rates import compute_rates, summarize


class Mixed(nn.Module):
    """One call of each kind: a linear layer, a batched product, a dense and a depthwise conv, and a ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.linear = nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.depthwise(self.conv(x)).relu()  # (1, 4, 5, 5)
        tokens = y.flatten(2)  # (1, 4, 25)
        return self.linear(tokens[..., :5]) + torch.bmm(tokens, tokens.transpose(1, 2)).sum()


def test_each_product_and_convolution_is_counted_once_per_call_with_its_operations():
    model, x = Mixed(), torch.randn(1, 3, 5, 5)
    result = compute_rates({'mixed': lambda: model(x)}, repeats=3, alone_repeats=2)['mixed']
    rates = result.calls
    assert len(result.run_seconds) == 3
    by_op = {r.op: r for r in rates}
    assert set(by_op) == {'conv2d', 'linear', 'bmm'} and len(rates) == 4  # two conv2d calls of different shapes
    convs = sorted((r for r in rates if r.op == 'conv2d'), key=lambda r: r.flops)
    assert [r.flops for r in convs] == [2 * 4 * 25 * 9, 2 * 4 * 25 * 27]  # depthwise, then dense 3->4
    assert [r.shapes for r in convs] == ['1x4x5x5 * 4x1x3x3', '1x3x5x5 * 4x3x3x3']
    assert by_op['linear'].flops == 2 * 4 * 6 * 5 and by_op['linear'].shapes == '1x4x5 @ 6x5'
    assert by_op['bmm'].flops == 2 * 4 * 4 * 25 and by_op['bmm'].kind == 'GEMM'
    for r in rates:
        assert r.calls == 1 and len(r.seconds_in_place) == 3 and r.seconds_alone > 0 and r.gflops_in_place > 0
    summary = summarize(result)
    assert summary.gemm_ms == pytest.approx(by_op['linear'].ms_in_place + by_op['bmm'].ms_in_place)
    assert summary.conv_ms == pytest.approx(sum(r.ms_in_place for r in convs))


def test_backward_convolutions_count_each_gradient_they_compute():
    model, x = Mixed(), torch.randn(1, 3, 5, 5, requires_grad=True)
    rates = compute_rates({'step': lambda: model(x).sum().backward()}, repeats=2, alone_repeats=2, grad=True)['step']
    backward = sorted((r for r in rates.calls if r.op == 'convolution_backward'), key=lambda r: r.flops)
    # input and weight gradients: twice the forward's operations (the input of the first conv requires grad too)
    assert [r.flops for r in backward] == [2 * 2 * 4 * 25 * 9, 2 * 2 * 4 * 25 * 27]
    assert {r.op for r in rates.calls} >= {'convolution', 'mm', 'convolution_backward'}  # autograd decomposes


def test_only_cpu_runs_are_timed():
    model, x = Mixed().to('meta'), torch.randn(1, 3, 5, 5, device='meta')
    with pytest.raises(ValueError, match='CPU operators; got a tensor on meta'):
        compute_rates({'mixed': lambda: model(x)})


def test_tables_compare_the_models_and_state_the_bound(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, 'get_cpu_capability', lambda: 'AVX2')  # evit_mm's 1x1 GEMMs on
    table = compute_rates_table('m0', (1, 64, 64), repeats=2, top=100)
    for model in ('evit_mm deploy', 'timm', 'timm fused'):
        assert f'| {model} |' in table and f'| {model}: call |' in table
    assert 'addmm' in table and 'conv2d' in table  # evit_mm's 1x1 layers as GEMMs, timm's as convolutions
    assert 'timm over evit_mm deploy, forwards:' in table and 'the most it could be were everything but' in table
    table = compute_rates_table('m0', (2, 64, 64), repeats=2, top=100, train=True)
    assert '| evit_mm train |' in table and '| timm train |' in table and 'convolution_backward' in table
    assert 'timm train over evit_mm train, training steps:' in table

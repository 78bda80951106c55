"""Operators a lower precision makes slower (``tools/benchmark_backbone.py --precision-profile``): per operator and
input shapes, float32 against autocast, on the CPU."""
from __future__ import annotations

import pytest
import torch

from evit_mm.benchmark.backbone import precision_profile_table
from evit_mm.benchmark.precision_profile import OpCost, format_precision_costs, operator_times, precision_costs
from tests.helpers import load_tool

CPU = torch.device('cpu')


def test_operator_times_are_per_operator_and_shapes():
    a, b, c = torch.randn(64, 64), torch.randn(64, 64), torch.randn(32, 64)
    times = operator_times(lambda: (a @ b, c @ a, c @ b), CPU, calls=3)
    keys = [key for key in times if key[0] == 'aten::mm']
    assert sorted(keys) == [('aten::mm', '[[32, 64], [64, 64]]'), ('aten::mm', '[[64, 64], [64, 64]]')]
    assert times[('aten::mm', '[[32, 64], [64, 64]]')][1] == 2  # calls per run
    assert all(ms > 0 for ms, _ in times.values())


def test_operator_times_rejects_no_calls():
    with pytest.raises(ValueError, match='calls must be positive'):
        operator_times(lambda: None, CPU, calls=0)


def test_an_operator_slower_in_the_lower_precision_comes_first():
    """The "lower precision" run does the same product and, at one shape only it has, a much larger one: that one
    heads the list, all extra; the shared product is matched by its shapes."""
    a, big = torch.randn(32, 32), torch.randn(384, 384)
    costs, float32_ms = precision_costs(lambda: a @ a, lambda: (a @ a, big @ big), CPU, calls=2)
    assert costs[0].name == 'aten::mm' and costs[0].shapes == '[[384, 384], [384, 384]]'
    assert costs[0].float32_ms == 0 and costs[0].extra_ms == costs[0].low_ms > 0
    shared = next(c for c in costs if c.shapes == '[[32, 32], [32, 32]]')
    assert shared.float32_ms > 0 and float32_ms >= shared.float32_ms
    assert [c.extra_ms for c in costs] == sorted((c.extra_ms for c in costs), reverse=True)


def test_the_table_lists_the_top_operators_after_the_totals():
    costs = [OpCost('aten::a', '[[2]]', 1.0, 5.0, 3), OpCost('aten::b', '[[4]]', 2.0, 2.5, 1),
             OpCost('aten::c', '[[8]]', 3.0, 1.0, 1)]
    table = format_precision_costs(costs, 6.5, 'demo', 'bf16', top=2).splitlines()
    assert table[0].startswith('demo: ') and 'bf16 8.50 ms, float32 6.50 ms' in table[0]
    assert table[4:] == ['| aten::a | [[2]] | 3 | 1.000 | 5.000 | +4.000 |',
                         '| aten::b | [[4]] | 1 | 2.000 | 2.500 | +0.500 |']


def test_the_backbone_training_step_in_bfloat16():
    table = precision_profile_table('m0', (2, 64, 64), 'cpu', 'bf16', train=True, top=8, calls=1)
    lines = table.splitlines()
    assert lines[0].startswith('evit_mm training step, m0 at 2x64x64 on cpu:')
    assert len(lines) == 4 + 8
    extras = []
    for line in lines[4:]:  # | operator | input shapes | calls | float32 ms | bf16 ms | extra ms |
        cells = [cell.strip() for cell in line.strip('|').split(' | ')]
        assert len(cells) == 6 and cells[0] and cells[1].startswith('[')  # an operator or autograd node, shapes
        float32_ms, low_ms, extra_ms = map(float, cells[3:])
        assert extra_ms == pytest.approx(low_ms - float32_ms, abs=2e-3)
        extras.append(extra_ms)
    assert extras == sorted(extras, reverse=True)  # the operators bfloat16 makes slowest first


def test_the_tool_asks_for_a_lower_precision(capsys):
    tool = load_tool('benchmark_backbone')
    with pytest.raises(SystemExit):
        tool.parse_args(['--precision-profile'])
    assert '--precision-profile compares float32 with a lower precision' in capsys.readouterr().err
    assert tool.parse_args(['--precision-profile', '--dtype', 'bf16']).precision_profile
    with pytest.raises(ValueError, match='give dtype bf16 or fp16'):
        precision_profile_table('m0', (1, 64, 64), 'cpu', 'fp32')

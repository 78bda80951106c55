"""The backbone benchmark runs, checks equal outputs first, and reports positive throughputs (no timing asserts)."""
from __future__ import annotations

from evit_mm.benchmark.backbone import compare, format_rows


def test_compare_runs_at_tiny_size():
    rows = compare('m0', shapes=((2, 64, 96),), warmup=0, repeats=1, train=True)
    assert [r.fused for r in rows] == [False, True, 'train']
    assert all(r.ours > 0 and r.timm > 0 for r in rows)
    table = format_rows(rows)
    assert table.count('\n') == 4 and '| m0 | 2x64x96 | yes |' in table and '| train |' in table

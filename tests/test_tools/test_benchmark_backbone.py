"""The backbone benchmark runs, checks equal outputs first, and reports positive throughputs (no timing asserts)."""
from __future__ import annotations

import pytest

from evit_mm.benchmark.backbone import compare, format_rows


def test_compare_runs_at_tiny_size():
    rows = compare('m0', shapes=((2, 64, 96),), warmup=0, repeats=1, train=True)
    assert [r.case for r in rows] == ['eval', 'deploy vs timm as shipped', 'deploy vs timm fused', 'train']
    assert all(r.ours > 0 and r.timm > 0 and r.ratio > 0 for r in rows)
    table = format_rows(rows)
    assert table.count('\n') == 5 and '| m0 | 2x64x96 | deploy vs timm as shipped |' in table


def test_compare_times_under_autocast():
    rows = compare('m0', shapes=((2, 64, 64),), warmup=0, repeats=1, train=True, dtype='bf16')
    assert len(rows) == 4 and all(r.ours > 0 and r.timm > 0 for r in rows)


def test_compare_rejects_unknown_dtype():
    with pytest.raises(ValueError, match=r"unknown dtype 'fp8'; choose one of \['bf16', 'fp16', 'fp32'\]"):
        compare('m0', shapes=((1, 64, 64),), dtype='fp8')

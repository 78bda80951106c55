"""The Winograd benchmark: every tile timed against the direct convolution, each one's float32 error reported
(no timing asserted)."""
from __future__ import annotations

import runpy

import pytest

from evit_mm.benchmark.inputs import parse_shape
from evit_mm.benchmark.winograd_convs import compare_winograd, format_conv_rows
from tests.conftest import REPO_ROOT


def test_every_tile_is_timed_and_as_accurate_as_the_direct_convolution():
    rows = compare_winograd(((64, 32, 20, 24), (32, 16, 5, 7)), warmup=0, repeats=2)
    assert [r.shape for r in rows] == [(64, 32, 20, 24), (32, 16, 5, 7)]
    for r in rows:
        assert list(r.ms) == ['direct', 'F(2x2,3x3)', 'F(4x4,3x3)'] and min(r.ms.values()) > 0
        assert max(r.error.values()) < 1e-5
    table = format_conv_rows(rows)
    assert table.count('\n') == 3 and table.splitlines()[2].startswith('| 64->32, 20x24 | ')


def test_tool_prints_the_table(capsys):
    tool = runpy.run_path(str(REPO_ROOT / 'tools/benchmark_winograd.py'))
    tool['main'](['--shapes', '32x16x12x10', '--repeats', '1', '--warmup', '0', '--threads', '2'])
    out = capsys.readouterr().out
    assert 'default allocator settings' in out and '| 32->16, 12x10 |' in out


def test_conv_shapes_parse_or_explain():
    assert parse_shape('256x720x100x167', dims=4) == (256, 720, 100, 167)
    with pytest.raises(ValueError, match=r'CINxCOUTxHxW \(a convolution\), e.g. 256x256x100x167'):
        parse_shape('256x256', dims=4)

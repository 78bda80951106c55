"""The benchmark tools' profiler: its own start and stop lines kept off stderr, the profiled code's kept on it."""
from __future__ import annotations

import os

import pytest
import torch
from torch.profiler import ProfilerActivity

from evit_mm.benchmark.quiet_profiler import quiet_profile


def test_profiled_code_still_writes_to_stderr_and_the_profiler_does_not(capfd):
    with quiet_profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.ones(4).add_(1)
        os.write(2, b'written while profiling\n')
    os.write(2, b'after\n')
    assert capfd.readouterr().err == 'written while profiling\nafter\n'
    assert any(e.name == 'aten::add_' for e in prof.events())


def test_the_profiler_stops_when_the_profiled_code_raises():
    with pytest.raises(KeyError, match='inside'), quiet_profile(activities=[ProfilerActivity.CPU]):
        raise KeyError('inside')
    with quiet_profile(activities=[ProfilerActivity.CPU]) as prof:  # a second profiler can start: the first stopped
        torch.ones(2).mul_(3)
    assert any(e.name == 'aten::mul_' for e in prof.events())

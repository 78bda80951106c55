"""Interleaved timing: every candidate timed in every round, the order reversed every other round."""
from __future__ import annotations

import mmap

from evit_mm.benchmark.timing import time_interleaved


def test_rounds_alternate_the_order_of_the_candidates():
    calls: list[str] = []
    candidates = {name: (lambda name=name: calls.append(name)) for name in 'abc'}
    timings = time_interleaved(candidates, images_per_call=2, warmup=1, repeats=4)
    assert calls == list('abc') + list('abc' 'cba' 'abc' 'cba')  # warm-up, then 4 rounds
    assert all(len(t.latencies) == 4 and t.images_per_call == 2 for t in timings.values())


def test_time_budget_runs_at_least_three_rounds():
    calls: list[str] = []
    timings = time_interleaved({'only': lambda: calls.append('x')}, 1, warmup=0, time_budget=0.0)
    assert len(calls) == 3 and len(timings['only'].latencies) == 3


def test_page_faults_of_fresh_memory_are_counted_per_call():
    def touch_fresh_pages() -> None:
        with mmap.mmap(-1, 8 << 20) as fresh:  # anonymous: the kernel maps in a zeroed page at each first write
            for offset in range(0, len(fresh), mmap.PAGESIZE):
                fresh[offset] = 1

    timings = time_interleaved({'fresh': touch_fresh_pages, 'nothing': lambda: None}, 1, warmup=1, repeats=3)
    assert all(isinstance(n, int) for t in timings.values() for n in t.page_faults)
    assert len(timings['fresh'].page_faults) == 3
    assert timings['fresh'].median_page_faults > timings['nothing'].median_page_faults

"""Interleaved timing of several callables, so that ratios between them are measured under the same load."""
from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch


#: Calls that bring an evit_mm model to its steady state: the first fills its caches (attention-bias tables, folded
#: weights), the second with the same input shape makes the deployed convs' prepacked weights
#: (:class:`~evit_mm.models.fused_conv.DerivedWeights`).
STEADY_STATE_CALLS = 2


def warm_up(run: Callable[[], object], calls: int = STEADY_STATE_CALLS) -> None:
    """Call ``run`` until the model it runs is in its steady state (:data:`STEADY_STATE_CALLS`)."""
    for _ in range(calls):
        run()


@dataclass
class Timing:
    """Per-call latencies (seconds) of one candidate and the images each call processes, and, where recorded, the
    process's minor page faults during each call (:func:`minor_page_faults`)."""

    name: str
    latencies: list[float]
    images_per_call: int
    page_faults: list[int] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]

    @property
    def images_per_second(self) -> float:
        return self.images_per_call / self.median

    @property
    def median_page_faults(self) -> float | None:
        """Median minor page faults per call; None where they were not recorded."""
        return statistics.median(self.page_faults) if self.page_faults else None


def minor_page_faults() -> int:
    """Minor page faults of this process so far (all threads): pages the kernel mapped in, zeroed, on first touch.

    Why count them: a fresh page costs about 1 us here, so a forward pass that allocates a few hundred MB of fresh
    memory spends tens of milliseconds in the kernel; how many depends on the C library's allocator and on what
    ran before (``evit_mm.deploy.keep_freed_memory``)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def synchronize(device: torch.device | None) -> None:
    """Wait for ``device``'s queued work (a no-op off CUDA), so that the clock reads finished work."""
    if device is not None and device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(candidates: Mapping[str, Callable[[], object]], images_per_call: int, warmup: int = 3,
                     repeats: int = 10, device: torch.device | None = None,
                     time_budget: float | None = None, grad: bool = False) -> dict[str, Timing]:
    """Time each candidate ``repeats`` times in rounds after ``warmup`` calls each; every other round runs the
    candidates in reverse order (A, B, C, C, B, A, A, B, C, ...).

    Rounds keep slow drifts of the machine (other load, frequency changes) from favouring whichever candidate
    happened to run first; reversing the order gives each candidate its neighbours on both sides, so none always
    runs right after the same other model (whose freed memory and evicted caches it would inherit); medians are
    robust to the odd outlier. Each call's minor page faults are recorded too. With ``time_budget`` (seconds),
    rounds continue until the budget is spent (at least 3 rounds), instead of a fixed ``repeats``. Candidates run
    under ``torch.inference_mode`` unless ``grad`` (training steps with a backward pass).
    """
    with torch.inference_mode(not grad):
        return _time_rounds(candidates, images_per_call, warmup, repeats, device, time_budget)


def _time_rounds(candidates: Mapping[str, Callable[[], object]], images_per_call: int, warmup: int, repeats: int,
                 device: torch.device | None, time_budget: float | None) -> dict[str, Timing]:
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
        synchronize(device)
    latencies: dict[str, list[float]] = {name: [] for name in candidates}
    faults: dict[str, list[int]] = {name: [] for name in candidates}
    order = list(candidates.items())
    began = time.perf_counter()
    rounds = 0
    while (rounds < repeats) if time_budget is None else (rounds < 3 or time.perf_counter() - began < time_budget):
        rounds += 1
        for name, fn in order if rounds % 2 else reversed(order):
            synchronize(device)
            faulted = minor_page_faults()
            start = time.perf_counter()
            fn()
            synchronize(device)
            latencies[name].append(time.perf_counter() - start)
            faults[name].append(minor_page_faults() - faulted)
    return {name: Timing(name, values, images_per_call, faults[name]) for name, values in latencies.items()}


def paired_ratios(reference: Timing, candidate: Timing) -> list[float]:
    """``reference / candidate`` latency of each round (> 1: the candidate is faster)."""
    return [r / c for r, c in zip(reference.latencies, candidate.latencies, strict=True)]


def quartiles(values: list[float]) -> tuple[float, float]:
    """25th and 75th percentile of ``values`` (inclusive method: a single value is both)."""
    if len(values) < 2:
        return values[0], values[0]
    lower, _, upper = statistics.quantiles(values, n=4, method='inclusive')
    return lower, upper

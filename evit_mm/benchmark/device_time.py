"""How much of each call the device spends computing: busy time from the profiler against the wall clock.

Why: on an H200 EfficientViT was bound by the host, not by the GPU (``docs/benchmarks.md``, "Issue 8 on a GPU": about
11 ms per deployed M4 call at batch 1, 5.4 ms of GPU kernels per call at batch 256). Where a call's wall time is
mostly the host launching kernels, its ratio to another model says little about either model's kernels; the busy
times say what each would take once the launches are gone (CUDA graphs), and so how far ahead evit_mm can get.

On a GPU the busy time is the sum of the durations of the kernels, copies and memsets the profiler records on the
device (one stream: they do not overlap); on a CPU, where operators run synchronously, it is the time of the
top-level operators (the rest of the wall time is Python and module overhead). Wall times come from interleaved
rounds without the profiler (:func:`~.timing.time_interleaved`), busy times from separate profiled calls.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity

from .host_work import VIEW_OPS, top_level_operators
from .quiet_profiler import quiet_profile
from .timing import synchronize, time_interleaved, warm_up


@dataclass(frozen=True)
class DeviceTime:
    """One candidate's calls: wall time, the device's busy time within it, and how many device tasks it ran."""

    wall_ms: float  # median per call, interleaved rounds, device synchronized
    busy_ms: float  # per call: GPU kernels, copies and memsets; on a CPU, top-level operators
    tasks: float  # per call: GPU kernels, copies and memsets; on a CPU, top-level operators other than views

    @property
    def busy_fraction(self) -> float:
        """Share of the wall time the device computes (near 1: device-bound; small: waiting for the host)."""
        return self.busy_ms / self.wall_ms


def _busy(events: list, device: torch.device) -> tuple[float, int]:
    """Busy microseconds and task count of profiled ``events`` on ``device`` (see the module docstring)."""
    if device.type == 'cuda':
        tasks = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_async]
        return sum(e.device_time_total for e in tasks), len(tasks)
    top = [e for e in top_level_operators(events) if e.device_type == DeviceType.CPU]
    return sum(e.cpu_time_total for e in top), sum(e.name not in VIEW_OPS for e in top)


def busy_time(run: Callable[[], object], device: torch.device, calls: int = 5,
              grad: bool = False) -> tuple[float, float]:
    """``(busy ms, tasks)`` per call of ``run`` on ``device``, from ``calls`` profiled calls after warm-up
    (under ``torch.inference_mode`` unless ``grad``)."""
    if calls < 1:
        raise ValueError(f'calls must be positive, got {calls}')
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == 'cuda' else [])
    with torch.inference_mode(not grad):
        warm_up(run)
        synchronize(device)
        with quiet_profile(activities=activities) as prof:
            for _ in range(calls):
                run()
            synchronize(device)
    busy_us, tasks = _busy(list(prof.events()), device)
    return busy_us / calls / 1e3, tasks / calls


def device_times(candidates: Mapping[str, Callable[[], object]], device: torch.device, repeats: int = 10,
                 calls: int = 5, grad: bool = False) -> dict[str, DeviceTime]:
    """Wall time (``repeats`` interleaved rounds) and busy time (``calls`` profiled calls) of each candidate."""
    walls = time_interleaved(candidates, 1, warmup=2, repeats=repeats, device=device, grad=grad)
    times = {}
    for name, run in candidates.items():
        busy_ms, tasks = busy_time(run, device, calls, grad)
        times[name] = DeviceTime(walls[name].median * 1e3, busy_ms, tasks)
    return times


def format_device_times(times: Mapping[str, DeviceTime], pairs: Mapping[str, tuple[str, str]], what: str) -> str:
    """A Markdown table of ``times`` and, for each ``label: (ours, reference)`` of ``pairs`` present in ``times``,
    the reference's wall and busy times over ours (> 1: ours faster; the busy ratio is the one a device-bound run,
    e.g. with CUDA graphs, would approach)."""
    lines = [f'| {what} | wall ms per call | busy ms per call | busy share | device tasks per call |',
             '|---|---|---|---|---|']
    for name, t in times.items():
        lines.append(f'| {name} | {t.wall_ms:.2f} | {t.busy_ms:.2f} | {t.busy_fraction:.0%} | {t.tasks:.0f} |')
    ratios = [f'{label}: wall {_ratio(times[b].wall_ms, times[a].wall_ms)}, '
              f'busy {_ratio(times[b].busy_ms, times[a].busy_ms)}'
              for label, (a, b) in pairs.items() if a in times and b in times]
    return '\n'.join(lines + ([''] + ratios if ratios else []))


def _ratio(reference: float, ours: float) -> str:
    # a profiler that recorded no device work (e.g. no kernel tracing for graph replays) says so instead of failing
    return f'{reference / ours:.2f}x' if reference > 0 and ours > 0 else 'not recorded'

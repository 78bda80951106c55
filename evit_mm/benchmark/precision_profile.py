"""Which operators a lower precision makes slower: one call profiled per operator and input shape in float32 and
under autocast, side by side.

Why: a kernel that is slow in one precision hides inside a whole call's ratio and shows at once per operator and
shape. This comparison found torch's bfloat16 input gradient of strided depthwise convolutions on the CPU, 35-90x
slower than float32's (``evit_mm.models.depthwise_grad``; ``docs/benchmarks.md``, "bfloat16 training on the CPU").
On a GPU the times are the device's (each kernel counted for the operator that launched it), on a CPU the
operators' own.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.profiler import ProfilerActivity

from .quiet_profiler import quiet_profile
from .timing import synchronize, warm_up

#: Key of one operator call site: the operator's name and its input shapes.
OpKey = tuple[str, str]


@dataclass(frozen=True)
class OpCost:
    """One operator at one set of input shapes: milliseconds per call of the whole run, in float32 and lower."""

    name: str
    shapes: str
    float32_ms: float
    low_ms: float
    calls: float  # operator calls per run, in the lower precision

    @property
    def extra_ms(self) -> float:
        """What the lower precision costs over float32 here (negative: it saves)."""
        return self.low_ms - self.float32_ms


def operator_times(run: Callable[[], object], device: torch.device, calls: int = 3,
                   grad: bool = False) -> dict[OpKey, tuple[float, float]]:
    """``(self milliseconds, calls)`` per run of each operator and input shapes in ``calls`` profiled runs after a
    warm-up: device time on a GPU, the operators' own CPU time on a CPU."""
    if calls < 1:
        raise ValueError(f'calls must be positive, got {calls}')
    cuda = device.type == 'cuda'
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.inference_mode(not grad):
        warm_up(run)
        synchronize(device)
        with quiet_profile(activities=activities, record_shapes=True) as prof:
            for _ in range(calls):
                run()
            synchronize(device)
    times = {}
    for event in prof.key_averages(group_by_input_shape=True):
        us = event.self_device_time_total if cuda else event.self_cpu_time_total
        if us > 0:
            times[(event.key, str(event.input_shapes))] = (us / calls / 1e3, event.count / calls)
    return times


def precision_costs(float32_run: Callable[[], object], low_run: Callable[[], object], device: torch.device,
                    calls: int = 3, grad: bool = False) -> tuple[list[OpCost], float]:
    """Every operator and input shape of ``low_run`` (the same call under autocast) against ``float32_run``, most
    extra time first, and the float32 run's total milliseconds of operators. An operator and shapes that float32
    does not run (autocast's casts) counts as all extra; those that only float32 runs count in its total only."""
    float32 = operator_times(float32_run, device, calls, grad)
    low = operator_times(low_run, device, calls, grad)
    costs = [OpCost(name, shapes, float32.get((name, shapes), (0.0, 0.0))[0], ms, count)
             for (name, shapes), (ms, count) in low.items()]
    return sorted(costs, key=lambda c: c.extra_ms, reverse=True), sum(ms for ms, _ in float32.values())


def format_precision_costs(costs: list[OpCost], float32_total_ms: float, what: str, dtype: str, top: int = 15) -> str:
    """The ``top`` operators of ``costs`` that ``dtype`` makes slowest, as Markdown, after the totals."""
    low_total = sum(c.low_ms for c in costs)
    header = (f'{what}: the operators and shapes that {dtype} makes slowest against float32 (self time per run; '
              f'all operators: {dtype} {low_total:.2f} ms, float32 {float32_total_ms:.2f} ms)')
    lines = [header, '', f'| operator | input shapes | calls | float32 ms | {dtype} ms | extra ms |',
             '|---|---|---|---|---|---|']
    for c in costs[:top]:
        lines.append(f'| {c.name} | {c.shapes} | {c.calls:.0f} | {c.float32_ms:.3f} | {c.low_ms:.3f} | '
                     f'{c.extra_ms:+.3f} |')
    return '\n'.join(lines)

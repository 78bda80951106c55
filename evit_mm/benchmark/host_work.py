"""Host-side work of one forward pass: operator calls and module calls, counted (deterministic, any machine).

Where a GPU waits for the host (EfficientViT at batch 1 on an H200, ``docs/benchmarks.md``), these counts explain
the wall clock better than FLOPs do; they are the same on every machine, so a CPU-only session can measure them.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import torch
from torch import nn
from torch.profiler import ProfilerActivity

from .quiet_profiler import quiet_profile
from .timing import warm_up

#: Operators that only describe memory (no kernel on a GPU) or allocate it.
VIEW_OPS = frozenset({
    'aten::alias', 'aten::as_strided', 'aten::chunk', 'aten::detach', 'aten::empty', 'aten::empty_like',
    'aten::empty_strided', 'aten::expand', 'aten::flatten', 'aten::narrow', 'aten::permute', 'aten::reshape',
    'aten::select', 'aten::slice', 'aten::split', 'aten::split_with_sizes', 'aten::squeeze', 'aten::t',
    'aten::transpose', 'aten::unbind', 'aten::unflatten', 'aten::unsqueeze', 'aten::view', 'aten::_unsafe_view'})


@dataclass
class HostWork:
    """Calls made by one forward pass."""

    operators: int  # top-level operators (each costs dispatcher and Python time)
    compute_operators: int  # of which not views or allocations (on a GPU: about one kernel launch each)
    module_calls: int  # nn.Module calls (Python overhead per call)


def is_operator(event_name: str) -> bool:
    """Whether a profiler event is a dispatched operator: aten's, or another library's such as oneDNN's fused and
    prepacked convolutions (``mkldnn::_convolution_pointwise``), whose own aten calls are then not top-level."""
    return event_name.startswith(('aten::', 'mkldnn::', 'mkl::'))


def top_level_operators(events: list) -> list:
    """The profiled operator events called from Python, not from inside another operator (``conv2d`` counts once,
    not with the ``convolution`` and ``mkldnn_convolution`` it dispatches to).

    An operator is nested where its parent is an operator or, since torch 2.1's profiler leaves some nested
    operators without a parent (an ``mm`` inside a ``matmul``, a ``view`` inside a ``flatten``), where its time
    range ends inside the last top-level operator's on its thread (ranges sorted by start, longer first: an outer
    operator comes before what it contains)."""
    operators = sorted((e for e in events if is_operator(e.name)),
                       key=lambda e: (e.thread, e.time_range.start, -e.time_range.end))
    top: list = []
    last_end: dict[int, float] = {}  # per thread: where the last top-level operator ends
    for event in operators:
        parent = event.cpu_parent
        if parent is not None and is_operator(parent.name):
            continue
        if event.thread in last_end and event.time_range.end <= last_end[event.thread]:
            continue
        top.append(event)
        last_end[event.thread] = event.time_range.end
    return top


def count_host_work(model: nn.Module, *inputs: torch.Tensor) -> HostWork:
    """Count the operators and module calls of ``model(*inputs)`` under ``torch.inference_mode``.

    Top-level: :func:`top_level_operators`.
    """
    modules = collections.Counter()
    hooks = [m.register_forward_pre_hook(lambda module, args: modules.update((id(module),)))
             for m in model.modules()]
    try:
        with torch.inference_mode():
            warm_up(lambda: model(*inputs))  # so that the counted pass is a steady-state one
            modules.clear()
            with quiet_profile(activities=[ProfilerActivity.CPU]) as prof:
                model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    top_level = [e.name for e in top_level_operators(prof.events())]
    return HostWork(len(top_level), sum(name not in VIEW_OPS for name in top_level), sum(modules.values()))

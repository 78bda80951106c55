"""How much memory one call of a model needs beyond what is already allocated, on the CPU or a GPU, per target.

Why not the process's peak resident memory: it never goes down, so in a run that measures several targets every
row after the first showed the largest model measured so far, and it counts whatever the C library keeps of freed
memory; CUDA's allocator peak, reset per target, still counted every other target's weights held on the device.
Here each target's row is the peak of the tensors one steady-state call allocates (activations, outputs and
workspaces that go through PyTorch's allocator) above what was allocated before the call, beside the size of its
own weights.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .quiet_profiler import native_stderr_silenced

MIB = 2 ** 20


def weights_mb(module: nn.Module) -> float:
    """MiB of ``module``'s parameters and buffers (shared tensors counted once)."""
    tensors = {t.data_ptr(): t for t in (*module.parameters(), *module.buffers()) if t.numel()}
    return sum(t.numel() * t.element_size() for t in tensors.values()) / MIB


def call_peak_mb(call: Callable[[], object], device: torch.device, grad: bool = False) -> float | None:
    """Peak MiB that one ``call`` allocates above what was allocated before it: by CUDA's allocator statistics on
    a GPU, by the profiler's allocation events on the CPU (tensors only: the private scratch buffers of oneDNN and
    MKL are not counted); None on other devices or where the profiler does not report them. A call that replays a
    CUDA graph reuses the memory its capture allocated, before this call: the graph's working memory is not in it.
    Like :func:`~.timing.time_interleaved`, the call runs under ``torch.inference_mode`` unless ``grad`` (a training
    step, whose saved activations are then part of its peak)."""
    with torch.inference_mode(not grad):
        return _call_peak(call, device)


def format_mb(value: float | None) -> str:
    """A table cell for MiB: one decimal, or ``-`` where nothing was measured."""
    return '-' if value is None else f'{value:.1f}'


def _call_peak(call: Callable[[], object], device: torch.device) -> float | None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / MIB
    if device.type == 'cpu':
        return _cpu_call_peak(call)
    return None


def _cpu_call_peak(call: Callable[[], object]) -> float | None:
    from torch.profiler import ProfilerActivity, profile
    # silenced throughout, not only the profiler's start and stop (quiet_profiler.quiet_profile): the memory profiler
    # also warns for every tensor the call frees that was allocated before it started (the input, cached buffers);
    # the call itself already ran, unprofiled and with its stderr, in the timed rounds
    with native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    try:  # the raw allocation and free events in time order (the public event list folds them into operators)
        events = [e for e in prof.profiler.kineto_results.events()
                  if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU]
    except AttributeError:
        return None
    live = peak = 0
    start = (lambda e: e.start_ns()) if events and hasattr(events[0], 'start_ns') else (lambda e: e.start_us())
    for event in sorted(events, key=start):  # start_ns: torch >= 2.2
        live += event.nbytes()
        peak = max(peak, live)
    return peak / MIB

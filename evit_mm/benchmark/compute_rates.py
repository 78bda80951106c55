"""How fast a forward pass or a training step runs its matrix products and convolutions, in place and alone.

This is the measurement behind issue 8's ceiling argument (``docs/benchmarks.md``, "The GEMMs and convolutions in
place ..."): if a model's GEMMs and convolutions already run at the speed the same calls reach alone, then a forward
pass can get faster only by doing less of that arithmetic or less of everything else, and the time of the products
alone bounds how far ahead of another model doing the same arithmetic it can get.

Each product and convolution of a forward pass or a training step (its backward pass's too) is timed where it runs
(a dispatch mode reads the clock around the operator, on a CPU where operators run synchronously; no profiler, whose
per-operator cost distorts short operators), then each distinct call (operator, shapes, strides) is repeated alone
on fresh tensors of the same layout. The clock around each operator adds a few microseconds of Python to it: meant
for inputs where these operators take tens of microseconds or more (the benchmark shapes), not for toy sizes.
"""
from __future__ import annotations

import math
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from .timing import warm_up

aten = torch.ops.aten


#: Matrix products: operator -> position of its first matrix operand, whose last dimension is the reduced one (K).
#: Composite operators (``matmul``, ``linear``) appear as such under ``torch.inference_mode``, which skips their
#: decomposition.
_PRODUCTS = {aten.mm.default: 0, aten.bmm.default: 0, aten.matmul.default: 0, aten.linear.default: 0,
             aten.addmm.default: 1, aten.addmm_.default: 1, aten.baddbmm.default: 1}
_CONVOLUTIONS = {aten.conv2d.default, aten.convolution.default}
if hasattr(torch.ops, 'mkldnn') and hasattr(torch.ops.mkldnn, '_convolution_pointwise'):
    _CONVOLUTIONS.add(torch.ops.mkldnn._convolution_pointwise.default)  # oneDNN conv (+ ReLU), deployed evit_mm


def _flops(func: torch._ops.OpOverload, args: tuple, out: object) -> tuple[str, int] | None:
    """``(kind, floating-point operations)`` of a product or convolution call, None for any other operator: two
    per multiply-add, each output element taking ``K`` of them (a product's reduced dimension; a convolution's
    ``in_channels / groups * kh * kw``); a convolution's backward call as many per gradient it computes (input,
    weight) as its forward pass."""
    if func in _PRODUCTS:
        return 'GEMM', 2 * out.numel() * args[_PRODUCTS[func]].shape[-1]
    if func in _CONVOLUTIONS and not (func is aten.convolution.default and args[6]):  # not transposed
        return 'conv', 2 * out.numel() * math.prod(args[1].shape[1:])  # oneDNN's packed weights: no views
    if func is aten.convolution_backward.default and not args[7]:  # input and/or weight gradient, not transposed
        grad_output, weight, output_mask = args[0], args[2], args[10]
        return 'conv', 2 * grad_output.numel() * weight[0].numel() * (int(output_mask[0]) + int(output_mask[1]))
    return None


@dataclass
class CallRate:
    """One distinct product or convolution call of a run (forward pass or training step)."""

    kind: str  # 'GEMM' or 'conv'
    op: str
    shapes: str
    calls: int  # per run
    flops: int  # per call
    seconds_in_place: list[float]  # every call of every timed run
    seconds_alone: float  # median of the call repeated alone

    @property
    def ms_in_place(self) -> float:
        """Milliseconds per run (forward pass or training step), in place."""
        return statistics.median(self.seconds_in_place) * self.calls * 1e3

    @property
    def gflops_in_place(self) -> float:
        return self.flops / statistics.median(self.seconds_in_place) / 1e9

    @property
    def gflops_alone(self) -> float:
        return self.flops / self.seconds_alone / 1e9


class _ComputeTimer(TorchDispatchMode):
    """Times every product and convolution call; keeps one replayable example of each distinct call."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds: dict[tuple, list[float]] = defaultdict(list)
        self.examples: dict[tuple, tuple] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in args:
            if isinstance(a, torch.Tensor) and a.device.type != 'cpu':
                raise ValueError(f'compute rates time CPU operators; got a tensor on {a.device} (on a GPU the clock '
                                 'would read launches, not kernels)')
        start = time.perf_counter()
        out = func(*args, **kwargs)
        elapsed = time.perf_counter() - start
        flops = _flops(func, args, out)
        if flops is not None:
            key = (func, tuple(_layout(a) if isinstance(a, torch.Tensor) else repr(a) for a in args))
            self.seconds[key].append(elapsed)
            self.examples.setdefault(key, (flops, args, kwargs))
        return out


def _layout(tensor: torch.Tensor) -> tuple:
    """Shape and strides; oneDNN's packed weights (deployed convs) have a blocked layout instead of strides."""
    return tuple(tensor.shape), 'oneDNN blocked' if tensor.is_mkldnn else tensor.stride()


def _fresh_like(value: object) -> object:
    """A tensor of the same shape, strides, dtype and device with new random values; other values unchanged (also
    oneDNN's packed weights, which cannot be viewed with strides: the same constant weights in every call)."""
    if not isinstance(value, torch.Tensor) or value.is_mkldnn:
        return value
    if not value.is_floating_point():
        return value.clone()
    # the storage a strided view spans (expanded tensors, stride 0, included), filled, then viewed the same way
    span = 1 + sum((size - 1) * stride for size, stride in zip(value.shape, value.stride(), strict=True))
    storage = torch.empty(span if value.numel() else 0, dtype=value.dtype, device=value.device).normal_()
    return storage.as_strided(value.shape, value.stride())


@torch.no_grad()
def _time_alone(func: Callable, args: tuple, kwargs: dict, repeats: int) -> float:
    args, kwargs = tree_map(_fresh_like, args), tree_map(_fresh_like, kwargs)
    func(*args, **kwargs)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        func(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _describe(kind: str, func: torch._ops.OpOverload, args: tuple) -> str:
    """The shapes of a product's two matrix operands (``MxK @ KxN``; ``linear``'s weight is ``NxK``), of a
    convolution's input and weight (``input * weight``) or of a convolution backward's output gradient and weight."""
    if kind == 'GEMM':
        first = _PRODUCTS[func]
        operands = args[first:first + 2]
    elif func is aten.convolution_backward.default:
        operands = args[0], args[2]  # output gradient, weight
    else:
        operands = args[:2]
    return (' @ ' if kind == 'GEMM' else ' * ').join('x'.join(map(str, a.shape)) for a in operands)


@dataclass
class ModelRates:
    """:func:`compute_rates` of one model."""

    calls: list[CallRate]  # biggest time per run first
    run_seconds: list[float]  # whole plain runs, each right before a timed one


def compute_rates(runs: Mapping[str, Callable[[], object]], repeats: int = 5, alone_repeats: int = 10,
                  grad: bool = False) -> dict[str, ModelRates]:
    """Every distinct GEMM and convolution call of each run (a forward pass, or with ``grad`` a training step:
    forward and backward), timed in place over ``repeats`` runs and alone, beside the time of whole plain runs. CPU
    only; runs go under ``torch.inference_mode`` unless ``grad``.

    In each of ``repeats`` rounds every run goes once plain, timed as a whole, then once with each product and
    convolution timed: both sides of the subtraction "run minus products" come from the same minutes of this
    machine (whose speed drifts by 10-20% over minutes).

    Raises:
        ValueError: If a run computes on another device than the CPU.
    """
    timers = {name: _ComputeTimer() for name in runs}
    whole: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode(not grad):
        for run in runs.values():
            warm_up(run)  # the models' caches and oneDNN's primitives
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                whole[name].append(time.perf_counter() - start)
                with timers[name]:
                    run()
    results = {}
    for name, timer in timers.items():
        calls = []
        for key, seconds in timer.seconds.items():
            (kind, flops), args, kwargs = timer.examples[key]
            calls.append(CallRate(kind, key[0].overloadpacket.__name__, _describe(kind, key[0], args),
                                  len(seconds) // repeats, flops, seconds,
                                  _time_alone(key[0], args, kwargs, alone_repeats)))
        results[name] = ModelRates(sorted(calls, key=lambda r: -r.ms_in_place), whole[name])
    return results


@dataclass
class ComputeSummary:
    """Totals of :func:`compute_rates` for one run, beside its whole time."""

    run_ms: float  # a whole run: forward pass or training step
    gemm_ms: float
    conv_ms: float
    gemm_gflops: float  # operations per second of all GEMM calls together, in place
    gemm_gflops_alone: float
    conv_gflops: float
    conv_gflops_alone: float


def summarize(rates: ModelRates) -> ComputeSummary:
    """Totals per kind; rates are all operations of a kind over all of its time (in place, or alone)."""
    def total(kind: str) -> tuple[float, float, float]:
        chosen = [r for r in rates.calls if r.kind == kind]
        flops = sum(r.flops * r.calls for r in chosen)
        in_place = sum(r.ms_in_place for r in chosen) / 1e3
        alone = sum(r.seconds_alone * r.calls for r in chosen)
        return in_place * 1e3, flops / in_place / 1e9 if in_place else 0.0, flops / alone / 1e9 if alone else 0.0
    gemm_ms, gemm_rate, gemm_alone = total('GEMM')
    conv_ms, conv_rate, conv_alone = total('conv')
    return ComputeSummary(statistics.median(rates.run_seconds) * 1e3, gemm_ms, conv_ms, gemm_rate, gemm_alone,
                          conv_rate, conv_alone)


def format_compute_rates(rates: Mapping[str, ModelRates], top: int = 12, run: str = 'forward') -> str:
    """The totals of each run (:func:`summarize`), then each run's ``top`` calls by time, as Markdown; ``run`` names
    what was timed (``forward``, ``training step``)."""
    lines = [f'| model | {run} ms | GEMMs ms (GFLOP/s in place / alone) | convolutions ms (GFLOP/s in place / alone) '
             '| everything else ms |', '|---|---|---|---|---|']
    for name, model_rates in rates.items():
        s = summarize(model_rates)
        lines.append(f'| {name} | {s.run_ms:.1f} '
                     f'| {s.gemm_ms:.1f} ({s.gemm_gflops:.0f} / {s.gemm_gflops_alone:.0f}) '
                     f'| {s.conv_ms:.1f} ({s.conv_gflops:.0f} / {s.conv_gflops_alone:.0f}) '
                     f'| {s.run_ms - s.gemm_ms - s.conv_ms:.1f} |')
    for name, model_rates in rates.items():
        lines += ['', f'| {name}: call | shapes | calls per {run} | ms per {run} | GFLOP/s in place | alone |',
                  '|---|---|---|---|---|---|']
        for r in model_rates.calls[:top]:
            lines.append(f'| {r.op} | {r.shapes} | {r.calls} | {r.ms_in_place:.2f} | {r.gflops_in_place:.0f} '
                         f'| {r.gflops_alone:.0f} |')
    return '\n'.join(lines)

"""evit_mm against timm with each model alone in a fresh process of its own, as each is deployed.

Why: in one process, two models share the C library's heap, and what one frees decides whether the other's next
maps come from reused memory or from fresh pages (about 1 us each on the project's CPU machine). The same deployed
M4 and timm ``efficientvit_m4`` measured 1.26-1.61x apart at 16x224x224 in one process, depending only on which
other models ran in the same rounds (``docs/benchmarks.md``, "Where the ratio comes from, stage by stage ...").
Alone in its process, each model shows what a deployment running it sees with the default allocator. Processes
alternate (A, B, B, A, A, B, ...) and each round's two medians give one ratio, so that the machine's drift between
rounds cancels as in :func:`~.timing.time_interleaved`; both processes build the same weights from one seed.

Run as ``python -m evit_mm.benchmark.isolated ARCH CANDIDATE BxHxW ...`` it is the worker: it times one candidate
and prints one JSON line.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence

import torch

from .allocator_option import add_allocator_argument, apply_allocator_argument
from .backbone import CASES, Row, build_pair, inference_call, training_step
from .inputs import count_type, shape_type
from .memory import call_peak_mb
from .timing import quartiles, time_interleaved

#: The comparisons of :data:`~.backbone.CASES` timed alone, with their evit_mm and timm candidates.
ISOLATED_CASES = {case: CASES[case] for case in ('deploy vs timm as shipped', 'train')}
#: Seed of the weights every worker builds (the same in every process).
SEED = 0
#: Seconds a worker may take before the run stops with an error.
WORKER_TIMEOUT_S = 900


def measure_alone(arch: str, candidate: str, shape: tuple[int, int, int], warmup: int, repeats: int) -> dict:
    """Latencies and page faults of ``candidate`` (a name of :data:`ISOLATED_CASES`' pairs) in this process, the
    only model built in it besides the pair's construction, and the memory one more call allocates
    (:func:`~.memory.call_peak_mb`)."""
    torch.manual_seed(SEED)
    pair = build_pair(arch)
    model = pair[0] if candidate.startswith('evit_mm') else pair[1]
    del pair  # the other model is freed before anything is timed
    x = torch.randn(shape[0], 3, *shape[1:])
    training = candidate.endswith('train')
    if training:
        call: Callable[[], object] = training_step(model.train(), x, contextlib.nullcontext)
    else:
        if candidate == 'evit_mm deploy':
            model.switch_to_deploy()
        call = inference_call(model, x, contextlib.nullcontext)
    result = time_interleaved({candidate: call}, shape[0], warmup, repeats, grad=training)[candidate]
    return {'latencies': result.latencies, 'page_faults': result.page_faults,
            'memory_mb': call_peak_mb(call, torch.device('cpu'), grad=training)}


def run_worker(arch: str, candidate: str, shape: tuple[int, int, int], warmup: int, repeats: int,
               threads: int | None, keep_freed_memory: bool) -> dict:
    """:func:`measure_alone` in a fresh Python process (this interpreter), with ``threads`` torch threads and,
    with ``keep_freed_memory``, glibc keeping freed memory in that process."""
    command = [sys.executable, '-m', 'evit_mm.benchmark.isolated', arch, candidate, 'x'.join(map(str, shape)),
               '--warmup', str(warmup), '--repeats', str(repeats)]
    if threads:
        command += ['--threads', str(threads)]
    if keep_freed_memory:
        command.append('--keep-freed-memory')
    done = subprocess.run(command, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f'the worker timing {candidate!r} at {shape} failed ({done.returncode}): '
                           f'{done.stderr.strip()[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare_isolated(arch: str = 'm4', shapes: Sequence[tuple[int, int, int]] = ((16, 224, 224), (1, 800, 1344)),
                     rounds: int = 4, warmup: int = 3, repeats: int = 10, train: bool = False,
                     threads: int | None = None, keep_freed_memory: bool = False,
                     worker: Callable[..., dict] = run_worker) -> list[Row]:
    """Rows like :func:`~.backbone.compare`'s for :data:`ISOLATED_CASES` (``train`` only with ``train``), each
    candidate timed alone in ``rounds`` fresh processes, alternating with its reference; the ratio is the median
    over rounds of the reference's median latency over the candidate's in the same round."""
    rows = []
    cases = {case: pair for case, pair in ISOLATED_CASES.items() if train or case != 'train'}
    for shape in shapes:
        for case, pair in cases.items():
            results: dict[str, list[dict]] = {name: [] for name in pair}  # one measure_alone result per round
            for round_index in range(rounds):
                for name in pair if round_index % 2 == 0 else pair[::-1]:
                    results[name].append(worker(arch, name, shape, warmup, repeats, threads, keep_freed_memory))
            ours, reference = ([statistics.median(r['latencies']) for r in results[name]] for name in pair)
            ratios = [r / o for o, r in zip(ours, reference, strict=True)]
            faults = [statistics.median(statistics.median(r['page_faults']) for r in results[name]) for name in pair]
            memory = [_median_or_none([r['memory_mb'] for r in results[name]]) for name in pair]
            rows.append(Row(arch, shape, f'{case}, each alone in its process', shape[0] / statistics.median(ours),
                            shape[0] / statistics.median(reference), statistics.median(ratios), quartiles(ratios),
                            *faults, *memory))
    return rows


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main(argv: list[str] | None = None) -> None:
    """The worker: time one candidate alone and print its :func:`measure_alone` result as one JSON line."""
    parser = argparse.ArgumentParser(description='Time one candidate of the backbone benchmark alone in this process')
    parser.add_argument('arch')
    parser.add_argument('candidate', choices=sorted({name for pair in ISOLATED_CASES.values() for name in pair}))
    parser.add_argument('shape', type=shape_type(3))
    parser.add_argument('--warmup', type=count_type(0), default=3)
    parser.add_argument('--repeats', type=count_type(1), default=10)
    parser.add_argument('--threads', type=count_type(1), default=None)
    add_allocator_argument(parser)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    apply_allocator_argument(args)
    print(json.dumps(measure_alone(args.arch, args.candidate, args.shape, args.warmup, args.repeats)))


if __name__ == '__main__':
    main()

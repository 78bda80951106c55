"""Time of each part of a backbone's forward pass (the stem, then each stage), timed inside whole calls.

Why: the whole-call ratio of two backbones says how far apart they are, not where. EfficientViT's parts scale
differently with the input (the stem's full-resolution maps, the attention's windows and their padding, the last
stage's small map whose products dominate), so the same two models can be 1.4x apart at one input size and 1.6x at
another. Timing the parts inside the same interleaved calls as the whole (a forward pre-hook on each part's first
module, a forward hook on its last) says which part makes the difference, with the same weights, in one run.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .timing import Timing, synchronize, time_interleaved

#: A part of a backbone: its name and the first and last modules it runs (the same module for a one-module part).
Part = tuple[str, nn.Module, nn.Module]


def backbone_parts(model: nn.Module) -> list[Part]:
    """The stem and the stages of an EfficientViT, in the order they run: evit_mm's
    :class:`~evit_mm.models.EfficientViT` (``patch_embed``, ``stages[i]``: its downsampling, then its blocks) or
    timm's ``efficientvit_m*`` (as a classifier: ``patch_embed``, ``stages``; ``features_only``: the flattened
    ``patch_embed_conv1 ... patch_embed_conv4``, ``stages_0 ...``)."""
    children = dict(model.named_children())
    if 'patch_embed' in children and isinstance(children.get('stages'), nn.ModuleList):  # evit_mm
        run = model.stages[:model.out_indices[-1] + 1]  # the stages after the last output do not run
        return [('stem', model.patch_embed, model.patch_embed)] + [
            (f'stage {i + 1}', stage.downsample, stage.blocks[-1]) for i, stage in enumerate(run)]
    if 'patch_embed' in children and isinstance(children.get('stages'), nn.Sequential):  # timm classifier
        return [('stem', model.patch_embed, model.patch_embed)] + [
            (f'stage {i + 1}', stage, stage) for i, stage in enumerate(model.stages)]
    stem = sorted(name for name in children if name.startswith('patch_embed_conv'))
    stages = sorted((name for name in children if name.startswith('stages_')), key=lambda n: int(n.split('_')[1]))
    if stem and stages:  # timm features_only
        return [('stem', children[stem[0]], children[stem[-1]])] + [
            (f'stage {i + 1}', children[name], children[name]) for i, name in enumerate(stages)]
    raise ValueError(f'cannot find the stem and stages of {type(model).__name__} (children: {sorted(children)}); '
                     'expected evit_mm\'s EfficientViT or timm\'s efficientvit_m* (as a classifier or features_only)')


@contextmanager
def recording_part_times(model: nn.Module, device: torch.device | None = None):
    """Within the block, every forward pass of ``model`` appends the seconds each of its :func:`backbone_parts`
    took to the yielded ``{part: [seconds, ...]}`` (on CUDA the device is synchronised at each part's edges, so
    the parts' times are the device's; the calls get slower for it)."""
    times: dict[str, list[float]] = {}
    handles = []
    for name, first, last in backbone_parts(model):
        times[name] = []
        started: list[float] = []

        def begin(*_, started=started) -> None:
            synchronize(device)
            started.append(time.perf_counter())

        def end(*_, started=started, record=times[name]) -> None:
            synchronize(device)
            record.append(time.perf_counter() - started.pop())

        handles += [first.register_forward_pre_hook(begin), last.register_forward_hook(end)]
    try:
        yield times
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class PartTimes:
    """One model's timed calls and the seconds of each of its parts in the same calls."""

    whole: Timing
    parts: dict[str, list[float]]


def time_parts(models: Mapping[str, nn.Module], calls: Mapping[str, Callable[[], object]], images_per_call: int,
               warmup: int = 3, repeats: int = 10, device: torch.device | None = None) -> dict[str, PartTimes]:
    """Time ``calls`` (each calling the model of the same name) in interleaved rounds (:func:`time_interleaved`)
    while recording the time of each part of each model; the warm-up calls are left out of the parts' times."""
    with ExitStack() as stack:
        recorded = [stack.enter_context(recording_part_times(models[name], device)) for name in calls]
        timings = time_interleaved(calls, images_per_call, warmup, repeats, device=device)
    return {name: PartTimes(timings[name], {part: seconds[warmup:] for part, seconds in parts.items()})
            for name, parts in zip(calls, recorded)}


def format_part_times(times: Mapping[str, PartTimes], ours: str, reference: str, title: str) -> str:
    """Markdown: milliseconds of each part (medians over the calls) of ``ours`` and ``reference`` and the paired
    median of ``reference / ours`` per part, then the whole call and what the parts leave out of it (input
    checks, the input's layout copy, the hooks)."""
    a, b = times[ours], times[reference]
    if list(a.parts) != list(b.parts):
        raise ValueError(f'{ours} has parts {list(a.parts)}, {reference} {list(b.parts)}: not comparable')
    lines = [f'| {title}: part | {ours} ms | {reference} ms | ratio (paired median) |', '|---|---|---|---|']
    rows = [(part, a.parts[part], b.parts[part]) for part in a.parts]
    rows.append(('whole call', a.whole.latencies, b.whole.latencies))
    rows.append(('outside the parts', _outside(a), _outside(b)))
    for name, mine, theirs in rows:
        ratios = [t / m for m, t in zip(mine, theirs, strict=True) if m > 0]
        ratio = f'{statistics.median(ratios):.2f}' if ratios else '-'
        lines.append(f'| {name} | {statistics.median(mine) * 1e3:.1f} | {statistics.median(theirs) * 1e3:.1f} | '
                     f'{ratio} |')
    lines.append(f'| page faults per call | {a.whole.median_page_faults:.0f} | {b.whole.median_page_faults:.0f} | |')
    return '\n'.join(lines)


def _outside(times: PartTimes) -> list[float]:
    """Per call: the whole call's seconds minus those of its parts."""
    return [whole - sum(part[i] for part in times.parts.values()) for i, whole in enumerate(times.whole.latencies)]

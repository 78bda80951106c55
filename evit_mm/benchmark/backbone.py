"""evit_mm's EfficientViT backbone against timm's ``efficientvit_m*`` (features_only), same weights."""
from __future__ import annotations

import contextlib
import copy
import functools
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import timm
import torch
from torch import nn

from ..checkpoint import to_backbone_state_dict
from ..deploy.bfloat16 import run_in_bfloat16
from ..deploy.cuda_graphs import use_cuda_graphs
from ..models import EfficientViT
from ..models.backbones import CLASSIFICATION_WINDOWS
from .backward_nodes import backward_breakdown, format_breakdown
from .compilation import compiled
from .compute_rates import compute_rates, format_compute_rates, summarize
from .device_time import device_times, format_device_times
from .host_work import count_host_work
from .memory import call_peak_mb, format_mb
from .part_times import format_part_times, time_parts
from .precision import autocast, exact_float32, norm_relative_error
from .precision_profile import format_precision_costs, precision_costs
from .timing import paired_ratios, quartiles, time_interleaved


def fuse_timm_efficientvit(model: nn.Module) -> nn.Module:
    """Apply to a timm EfficientViT the same Conv+BN fusion as ``EfficientViT.switch_to_deploy`` (in place):
    every child with timm's ``fuse()`` (``ConvNorm``, ``NormLinear``) is replaced by the module it returns."""
    for name, child in list(model.named_children()):
        if hasattr(child, 'fuse') and callable(child.fuse):
            setattr(model, name, child.fuse())
        else:
            fuse_timm_efficientvit(child)
    return model


def timm_features_key(key: str) -> str:
    """A timm/evit_mm parameter name as timm's ``features_only`` model spells it: its FeatureListNet flattens the
    top-level modules (``patch_embed.conv1`` -> ``patch_embed_conv1``, ``stages.0`` -> ``stages_0``)."""
    return re.sub(r'^(patch_embed|stages)\.(\w+)', r'\1_\2', key)


def build_pair(arch: str, img_size: int = 224) -> tuple[nn.Module, nn.Module]:
    """timm ``efficientvit_{arch}`` (features_only, created at ``img_size``) and evit_mm's backbone with the
    same weights and the same window geometry, both in eval mode."""
    reference = timm.create_model(f'efficientvit_{arch}', pretrained=False, img_size=img_size)
    windows = tuple(stage.blocks[0].mixer.m.attn.resolution for stage in reference.stages)
    ours = EfficientViT(arch, window_size=windows)
    ours.load_state_dict(to_backbone_state_dict(reference.state_dict()))
    features = timm.create_model(f'efficientvit_{arch}', pretrained=False, img_size=img_size, features_only=True)
    features.load_state_dict({timm_features_key(k): v for k, v in reference.state_dict().items()
                              if not k.startswith('head.')})
    return ours.eval(), features.eval()


@dataclass
class Row:
    """One comparison: images/s of an evit_mm variant and a timm variant timed in the same rounds."""

    arch: str
    shape: tuple[int, int, int]  # batch, height, width
    case: str  # which evit_mm variant against which timm variant (see CASES)
    ours: float  # images/s (median latency)
    timm: float
    ratio: float  # median over rounds of timm latency / evit_mm latency (paired: robust to machine drift)
    ratio_quartiles: tuple[float, float]  # 25th and 75th percentile of the same per-round ratios (the spread)
    ours_page_faults: float | None = None  # median minor page faults per call (Timing.median_page_faults)
    timm_page_faults: float | None = None
    ours_memory_mb: float | None = None  # MiB one call allocates above what was allocated before it (memory.py)
    timm_memory_mb: float | None = None


PLAIN_DEPLOY = 'evit_mm deploy, plain ops (the GPU path)'
KERNEL_DEPLOY = 'evit_mm deploy, CPU kernels'
UNPACKED_DEPLOY = 'evit_mm deploy, weights not prepacked'
UNFOLDED_EVAL = 'evit_mm, BatchNorm not folded in eval'
DEPLOY_BF16 = 'evit_mm deploy, bf16 weights'
TIMM_BF16 = 'timm, bf16 weights'
GRAPHED_DEPLOY = 'evit_mm deploy, CUDA graphs'
GRAPHED_TIMM_FUSED = 'timm fused, CUDA graphs'
#: Features of a model on bfloat16 weights against timm's in float32: relative error of the whole map (bfloat16
#: rounds each value to 2**-9; through the network M4's features measured 0.5-1.1% off).
BFLOAT16_RELATIVE_TOLERANCE = 2e-2

CASES = {
    'eval': ('evit_mm', 'timm'),  # both as built, unfused
    'deploy vs timm as shipped': ('evit_mm deploy', 'timm'),  # issue 8's target
    'deploy vs timm fused': ('evit_mm deploy', 'timm fused'),  # same Conv+BN folding on both
    'compiled deploy vs timm compiled': ('evit_mm deploy compiled', 'timm compiled'),
    'compiled deploy vs timm as shipped': ('evit_mm deploy compiled', 'timm'),
    'train': ('evit_mm train', 'timm train'),  # forward + backward
    # ablations (option ablate): evit_mm with one fast path switched off or on, against the same timm timings
    'eval without BN folding': (UNFOLDED_EVAL, 'timm'),
    'deploy without CPU kernels vs timm as shipped': (PLAIN_DEPLOY, 'timm'),
    'deploy with CPU kernels vs timm as shipped': (KERNEL_DEPLOY, 'timm'),  # the default on AVX2 CPUs only
    'deploy without prepacked weights vs timm as shipped': (UNPACKED_DEPLOY, 'timm'),
    # the GEMM convs (evit_mm.models.gemm_conv): both the default on AVX2 CPUs, the 1x1 GEMMs alone on Intel's
    # AVX-512 ones, neither elsewhere; each alone too, so that a CPU's own numbers can decide each default
    'train without GEMM convs': ('evit_mm train, no GEMM convs', 'timm train'),
    'train with GEMM convs': ('evit_mm train, GEMM convs', 'timm train'),
    'train with the 1x1 GEMMs alone': ('evit_mm train, 1x1 GEMMs', 'timm train'),
    'train with the im2col weight gradients alone': ('evit_mm train, im2col weight gradients', 'timm train'),
    # with dtype bf16: the strided depthwise convs' input gradients in bfloat16 (evit_mm.models.depthwise_grad)
    'train without float32 depthwise input gradients': ('evit_mm train, bf16 depthwise input grads', 'timm train'),
    # option bfloat16: both deployed on bfloat16 weights (float32 in and out, evit_mm.deploy.run_in_bfloat16)
    'deploy bf16 weights vs timm as shipped': (DEPLOY_BF16, 'timm'),
    'deploy bf16 weights vs timm bf16 weights': (DEPLOY_BF16, TIMM_BF16),
    # option cuda_graphs: both replayed from CUDA graphs (evit_mm.deploy.use_cuda_graphs)
    'deploy CUDA graphs vs timm as shipped': (GRAPHED_DEPLOY, 'timm'),
    'deploy CUDA graphs vs timm fused CUDA graphs': (GRAPHED_DEPLOY, GRAPHED_TIMM_FUSED),
}


def inference_candidates(arch: str, device: torch.device | str = 'cpu', ablations: bool = False,
                         bfloat16: bool = False, cuda_graphs: bool = False) -> dict[str, nn.Module]:
    """The models :func:`compare` times, same weights, on ``device``: ``evit_mm`` and ``timm`` as built,
    ``evit_mm deploy`` (``switch_to_deploy``) and ``timm fused`` (the same Conv+BN folding); with
    ``ablations`` also evit_mm deployed with plain ops (neither the CPU fused kernels nor prepacked weights: the path
    a GPU runs), with the CPU fused kernels (the default depends on the CPU,
    :func:`~evit_mm.models.eager_kernels.own_kernel_measured_faster`), without prepacked weights, and evit_mm in
    eval mode without its on-the-fly BatchNorm folding; with ``bfloat16`` also evit_mm deployed and timm as shipped on
    bfloat16 weights, float32 in and out (:func:`~evit_mm.deploy.bfloat16.run_in_bfloat16` on both); with
    ``cuda_graphs`` also evit_mm deployed and timm fused replaying CUDA graphs on a GPU
    (:func:`~evit_mm.deploy.cuda_graphs.use_cuda_graphs` on both)."""
    ours, reference = build_pair(arch)
    models = {'evit_mm': ours, 'timm': reference, 'evit_mm deploy': copy.deepcopy(ours).switch_to_deploy()}
    if ablations:
        models[PLAIN_DEPLOY] = copy.deepcopy(ours).switch_to_deploy(fused_kernels=False, prepack_weights=False)
        models[KERNEL_DEPLOY] = copy.deepcopy(ours).switch_to_deploy(fused_kernels=True)
        models[UNPACKED_DEPLOY] = copy.deepcopy(ours).switch_to_deploy(prepack_weights=False)
        models[UNFOLDED_EVAL] = copy.deepcopy(ours).set_conv_bn_paths(fold_eval_bn=False)
    models['timm fused'] = fuse_timm_efficientvit(copy.deepcopy(reference))
    if bfloat16:
        for name, source in ((DEPLOY_BF16, models['evit_mm deploy']), (TIMM_BF16, reference)):
            models[name] = copy.deepcopy(source)
            run_in_bfloat16(models[name])
    if cuda_graphs:
        for name, source in ((GRAPHED_DEPLOY, models['evit_mm deploy']), (GRAPHED_TIMM_FUSED, models['timm fused'])):
            models[name] = copy.deepcopy(source)
            use_cuda_graphs(models[name])
    return {name: model.to(device) for name, model in models.items()}


def _training_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The loss of the timed training step: mean squares of every feature map, summed in float32."""
    return sum(f.float().square().mean() for f in model(x))


def _check_graphs_device(cuda_graphs: bool, device: torch.device) -> None:
    """Refuse graphed candidates off a GPU, where they would run eagerly and be timed as if graphed."""
    if cuda_graphs and device.type != 'cuda':
        raise ValueError(f'CUDA graphs replay on a GPU only: cuda_graphs needs a cuda device, got {str(device)!r}')


def inference_call(model: nn.Module, x: torch.Tensor,
                   precision: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], object]:
    """The timed inference call: ``model(x)`` under ``precision`` (an autocast context or a no-op)."""
    def call() -> object:
        with precision():
            return model(x)
    return call


def training_step(model: nn.Module, x: torch.Tensor,
                  precision: Callable[[], contextlib.AbstractContextManager]) -> Callable[[], None]:
    """The timed training step: gradients cleared, the forward pass under ``precision``, the mean squares of every
    feature map as the loss, the backward pass."""
    def step() -> None:
        model.zero_grad(set_to_none=True)
        with precision():
            loss = _training_loss(model, x)
        loss.backward()
    return step


def compare(arch: str = 'm4', shapes: tuple[tuple[int, int, int], ...] = ((16, 224, 224), (1, 800, 1344)),
            warmup: int = 3, repeats: int = 10, train: bool = False, compile_mode: str | None = None,
            device: str = 'cpu', dtype: str = 'fp32', ablate: bool = False, bfloat16: bool = False,
            cuda_graphs: bool = False) -> list[Row]:
    """Images/s of evit_mm and timm at each ``(batch, height, width)``: as built, evit_mm deployed
    (``switch_to_deploy``) against timm as shipped and against timm with the same fusion, optionally both
    compiled and a training step. All inference candidates of one shape run in the same interleaved rounds.

    Args:
        compile_mode: Also time both deployed models compiled in this ``torch.compile`` mode (``reduce-overhead``:
            CUDA graphs); None: no compiled candidates.
        device: Where both models run (``cpu``, ``cuda``, ``cuda:N``).
        dtype: Autocast precision of the timed calls (``fp32``, ``fp16``, ``bf16``); the equivalence check that
            precedes the timing always runs in exact float32.
        ablate: Also time evit_mm with each fast path switched, in the same rounds: eval mode without the
            on-the-fly BatchNorm folding (``fold_eval_bn=False``), deployed with plain ops
            (``switch_to_deploy(fused_kernels=False, prepack_weights=False)``), with the CPU fused kernels and GEMMs
            (``fused_kernels=True``), without prepacked weights (``prepack_weights=False``) and, with ``train``,
            training without and with both GEMM convolutions (``set_conv_bn_paths`` with ``gemm_convs`` and
            ``im2col_weight_grads`` both False / both True) and with each alone and, with ``dtype``
            ``bf16``, without the float32 input gradients of the strided depthwise convs
            (``float32_depthwise_input_grad=False``); the default of the CPU kernels and of the GEMM convolutions
            depends on the CPU.
        bfloat16: Also time evit_mm deployed and timm as shipped on bfloat16 weights (float32 in and out), in the
            same rounds, against timm as shipped and against each other; their features are checked against timm's
            float32 ones to :data:`BFLOAT16_RELATIVE_TOLERANCE` of their norm.
        cuda_graphs: Also time evit_mm deployed and timm fused replaying CUDA graphs (a GPU ``device``), against
            timm as shipped and against each other; both are checked against timm like the others (which also
            captures their float32 graphs).
    """
    target = torch.device(device)
    precision = functools.partial(autocast, target.type, dtype)
    precision()  # an unknown dtype fails here, before any model is built
    _check_graphs_device(cuda_graphs, target)
    models = inference_candidates(arch, target, ablations=ablate, bfloat16=bfloat16, cuda_graphs=cuda_graphs)
    ours, reference = models['evit_mm'], models['timm']
    if compile_mode is not None:
        models['evit_mm deploy compiled'] = compiled(models['evit_mm deploy'], compile_mode, freezing=True)
        models['timm compiled'] = compiled(reference, compile_mode, freezing=True)
    rows = []
    for batch, height, width in shapes:
        x = torch.randn(batch, 3, height, width, device=target)
        with torch.inference_mode(), exact_float32():  # same weights must give the same features first
            expected = reference(x)
            for name, model in models.items():
                for u, v in zip(model(x), expected, strict=True):
                    if name in (DEPLOY_BF16, TIMM_BF16):
                        error = norm_relative_error(u, v)
                        assert error < BFLOAT16_RELATIVE_TOLERANCE, f'{name} differs from timm by {error:.2%}'
                    else:
                        torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-3, msg=f'{name} differs from timm')

        calls = {name: inference_call(m, x, precision) for name, m in models.items()}
        timings = time_interleaved(calls, batch, warmup, repeats, device=target)
        steps = {}
        if train:  # on copies: training-mode BatchNorm updates running statistics
            steps = {'evit_mm train': training_step(copy.deepcopy(ours).train(), x, precision),
                     'timm train': training_step(copy.deepcopy(reference).train(), x, precision)}
            if ablate:  # GEMM convs both ways: their defaults depend on the CPU (eager_kernels)
                paths = {'evit_mm train, no GEMM convs': dict(gemm_convs=False, im2col_weight_grads=False),
                         'evit_mm train, GEMM convs': dict(gemm_convs=True, im2col_weight_grads=True),
                         'evit_mm train, 1x1 GEMMs': dict(gemm_convs=True, im2col_weight_grads=False),
                         'evit_mm train, im2col weight gradients': dict(gemm_convs=False, im2col_weight_grads=True)}
                if dtype == 'bf16':  # the only precision in which that path applies
                    paths['evit_mm train, bf16 depthwise input grads'] = dict(float32_depthwise_input_grad=False)
                for name, switches in paths.items():
                    steps[name] = training_step(copy.deepcopy(ours).set_conv_bn_paths(**switches).train(), x,
                                                precision)
            timings.update(time_interleaved(steps, batch, warmup, repeats, device=target, grad=True))
        compared = {name for pair in CASES.values() for name in pair}
        memory = {name: call_peak_mb(call, target, grad=name in steps)
                  for name, call in {**calls, **steps}.items() if name in compared}
        for case, (a, b) in CASES.items():
            if a in timings:
                ratios = paired_ratios(timings[b], timings[a])
                rows.append(Row(arch, (batch, height, width), case, timings[a].images_per_second,
                                timings[b].images_per_second, statistics.median(ratios), quartiles(ratios),
                                timings[a].median_page_faults, timings[b].median_page_faults, memory[a], memory[b]))
    return rows


def host_work_table(arch: str = 'm4', shape: tuple[int, int, int] = (1, 224, 224)) -> str:
    """Operators and module calls of one forward pass of each candidate (see :mod:`.host_work`), as Markdown."""
    candidates = inference_candidates(arch, ablations=True)
    x = torch.randn(*shape[:1], 3, *shape[1:])
    lines = [f'| {arch} at {"x".join(map(str, shape))} | operators | compute operators | module calls |',
             '|---|---|---|---|']
    for name, model in candidates.items():
        work = count_host_work(model, x)
        lines.append(f'| {name} | {work.operators} | {work.compute_operators} | {work.module_calls} |')
    return '\n'.join(lines)


def compute_rates_table(arch: str = 'm4', shape: tuple[int, int, int] = (16, 224, 224), repeats: int = 10,
                        top: int = 12, train: bool = False) -> str:
    """Where the CPU forward passes of evit_mm deployed, timm as shipped and timm fused spend their time (with
    ``train``: the training steps of evit_mm and timm): their GEMMs and convolutions timed in place and alone
    (:mod:`.compute_rates`), beside each whole run (timed in the same rounds), and the bound this puts on evit_mm's
    lead over timm (as shipped), as Markdown."""
    x = torch.randn(shape[0], 3, *shape[1:])
    if train:
        ours, reference = build_pair(arch)
        runs = {'evit_mm train': training_step(ours.train(), x, contextlib.nullcontext),
                'timm train': training_step(reference.train(), x, contextlib.nullcontext)}
        names, what = ('evit_mm train', 'timm train'), 'training step'
    else:
        runs = {name: functools.partial(model, x) for name, model in inference_candidates(arch).items()
                if name in ('evit_mm deploy', 'timm', 'timm fused')}
        names, what = ('evit_mm deploy', 'timm'), 'forward'
    rates = compute_rates(runs, repeats=repeats, grad=train)
    ours_summary, timm_ms = summarize(rates[names[0]]), summarize(rates[names[1]]).run_ms
    bound = timm_ms / (ours_summary.gemm_ms + ours_summary.conv_ms)
    return (format_compute_rates(rates, top, what) + '\n\n'
            f'{names[1]} over {names[0]}, {what}s: {timm_ms / ours_summary.run_ms:.2f}x; the most it could be were '
            f'everything but evit_mm\'s GEMMs and convolutions free: {bound:.2f}x')


def part_times_table(arch: str = 'm4', shape: tuple[int, int, int] = (1, 800, 1344), warmup: int = 3,
                     repeats: int = 10, device: str = 'cpu', dtype: str = 'fp32') -> str:
    """Milliseconds of the stem and of each stage of evit_mm deployed and of timm as shipped (issue 8's
    comparison), timed inside the same interleaved calls (:mod:`.part_times`), with the paired ratio per part, as
    Markdown: which part makes the whole-call ratio at this input size."""
    target = torch.device(device)
    precision = functools.partial(autocast, target.type, dtype)
    ours, reference = build_pair(arch)  # these two only: other models' memory would sit in the same heap
    models = {'evit_mm deploy': ours.switch_to_deploy().to(target), 'timm': reference.to(target)}
    x = torch.randn(shape[0], 3, *shape[1:], device=target)
    times = time_parts(models, {name: inference_call(m, x, precision) for name, m in models.items()}, shape[0],
                       warmup, repeats, device=target)
    return format_part_times(times, 'evit_mm deploy', 'timm', f'{arch} at {"x".join(map(str, shape))}, {dtype}')


def device_time_table(arch: str = 'm4', shape: tuple[int, int, int] = (1, 224, 224), device: str = 'cuda',
                      dtype: str = 'fp16', train: bool = False, cuda_graphs: bool = False, repeats: int = 10,
                      calls: int = 5) -> str:
    """Per call of each inference candidate (evit_mm and timm as built, evit_mm deployed, timm fused; with
    ``cuda_graphs`` both deployed ones graphed) and, with ``train``, of both training steps: wall time against the
    device's busy time (:mod:`.device_time`), under the autocast of ``dtype``, as Markdown with the ratios of
    :data:`CASES`. On a GPU this says how host-bound each call is and what evit_mm's lead over timm becomes once
    both are device-bound."""
    target = torch.device(device)
    precision = functools.partial(autocast, target.type, dtype)
    _check_graphs_device(cuda_graphs, target)
    models = inference_candidates(arch, target, cuda_graphs=cuda_graphs)
    x = torch.randn(shape[0], 3, *shape[1:], device=target)
    where = f'{arch} at {"x".join(map(str, shape))}, {dtype}'
    tables = [format_device_times(
        device_times({name: inference_call(m, x, precision) for name, m in models.items()}, target, repeats, calls),
        CASES, f'{where}, inference')]
    if train:
        steps = {f'{name} train': training_step(copy.deepcopy(models[name]).train(), x, precision)
                 for name in ('evit_mm', 'timm')}
        tables.append(format_device_times(device_times(steps, target, repeats, calls, grad=True), CASES,
                                          f'{where}, training step'))
    return '\n\n'.join(tables)


def precision_profile_table(arch: str = 'm4', shape: tuple[int, int, int] = (16, 224, 224), device: str = 'cpu',
                            dtype: str = 'bf16', train: bool = False, top: int = 15, calls: int = 3) -> str:
    """evit_mm deployed (with ``train``: its training step) profiled per operator and input shape in float32 and under
    the autocast of ``dtype`` (:mod:`.precision_profile`): the operators ``dtype`` makes slowest, as Markdown."""
    if dtype == 'fp32':
        raise ValueError('the precision profile compares float32 with a lower precision: give dtype bf16 or fp16')
    target = torch.device(device)
    ours = EfficientViT(arch, window_size=CLASSIFICATION_WINDOWS).eval()  # build_pair's geometry, without timm
    x = torch.randn(shape[0], 3, *shape[1:], device=target)
    model = ours.to(target).train() if train else ours.switch_to_deploy().to(target)
    call = training_step if train else inference_call
    runs = [call(model, x, functools.partial(autocast, target.type, d)) for d in ('fp32', dtype)]
    costs, float32_ms = precision_costs(*runs, target, calls, grad=train)
    what = f'evit_mm {"training step" if train else "deployed"}, {arch} at {"x".join(map(str, shape))} on {device}'
    return format_precision_costs(costs, float32_ms, what, dtype, top)


def backward_nodes_table(arch: str = 'm4', shape: tuple[int, int, int] = (16, 224, 224), repeats: int = 6,
                         by_shape: bool = False, top: int = 25, device: str = 'cpu') -> str:
    """Milliseconds per autograd node kind of the training step's backward pass, evit_mm against timm (same
    weights, both in training mode, the step of ``--train`` in float32), timed by hooks on the nodes rather than the
    profiler (:mod:`.backward_nodes`), as Markdown."""
    ours, reference = build_pair(arch)
    x = torch.randn(*shape[:1], 3, *shape[1:], device=device)
    nodes, walls = backward_breakdown({'evit_mm': ours.to(device).train(), 'timm': reference.to(device).train()},
                                      functools.partial(_training_loss, x=x),
                                      repeats=repeats, by_shape=by_shape)
    return format_breakdown(nodes, walls, top)


def format_rows(rows: list[Row]) -> str:
    lines = ['| arch | input (BxHxW) | comparison | evit_mm img/s | timm img/s | ratio (paired median) | '
             'ratio, middle half of rounds | page faults per call, evit_mm / timm | call peak MB, evit_mm / timm |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r.arch} | {r.shape[0]}x{r.shape[1]}x{r.shape[2]} | {r.case} | {r.ours:.1f} | {r.timm:.1f} | '
                     f'{r.ratio:.2f} | {r.ratio_quartiles[0]:.2f}-{r.ratio_quartiles[1]:.2f} | '
                     f'{_count(r.ours_page_faults)} / {_count(r.timm_page_faults)} | '
                     f'{format_mb(r.ours_memory_mb)} / {format_mb(r.timm_memory_mb)} |')
    return '\n'.join(lines)


def _count(value: float | None) -> str:
    return '-' if value is None else f'{value:.0f}'

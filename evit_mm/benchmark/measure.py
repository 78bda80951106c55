"""Throughput, latency, memory, parameters and FLOPs of backbones and whole pipelines, in one run."""
from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

import torch

from .compilation import compiled
from .flop_count import count_params
from .inputs import synthetic_batch
from .memory import call_peak_mb, weights_mb
from .precision import autocast
from .targets import Target
from .tensor_mode import TensorMode
from .timing import Timing, paired_ratios, quartiles, time_interleaved
from .training import training_iteration

MODES = ('backbone', 'forward', 'predict', 'pipeline', 'train', 'onnx')
#: The modes that run a whole model built from a config (a backbone target has none of its parts).
CONFIG_MODES = ('forward', 'predict', 'pipeline')


@dataclass
class Options:
    device: str = 'cpu'
    batch_size: int = 1
    height: int = 224
    width: int = 224
    dtype: str = 'fp32'
    channels_last: bool = False
    compile_mode: str | None = None  # torch.compile the backbone in this mode (reduce-overhead: CUDA graphs)
    deploy: bool = False
    # with deploy: the switches of evit_mm.deploy.optimize_for_inference (fused_kernels, winograd, ...), passed on
    deploy_options: dict = field(default_factory=dict)
    warmup: int = 3
    repeats: int = 10
    time_budget: float | None = None
    # forward and predict modes: 'synthetic' images at height x width, or 'dataset': the config's first test batch
    images: str = 'synthetic'

    @property
    def bfloat16_weights(self) -> bool:
        """Deployed with the dense parts on bfloat16 weights."""
        return self.deploy and bool(self.deploy_options.get('bfloat16'))

    @property
    def cuda_graphs(self) -> bool:
        """Deployed with the dense parts replaying CUDA graphs."""
        return self.deploy and bool(self.deploy_options.get('cuda_graphs'))


def listing_label(name: str, deploy: bool, bfloat16_weights: bool, cuda_graphs: bool) -> str:
    """A target's name, and how it was deployed where it was: ``name (deploy, bf16 weights)``."""
    if not deploy:
        return name
    details = [detail for detail, on in (('bf16 weights', bfloat16_weights), ('CUDA graphs', cuda_graphs)) if on]
    return f'{name} (deploy{"".join(", " + d for d in details)})'


@dataclass
class Result:
    target: str
    kind: str
    mode: str
    device: str
    dtype: str
    batch: int
    shape: str
    images_per_s: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    peak_memory_mb: float | None  # MiB one steady-state call allocates above what was allocated before it
    memory_kind: str  # how peak_memory_mb was measured
    page_faults_per_call: float | None  # median minor page faults of the process per timed call
    params_m: float
    gflops: float | None
    weights_mb: float  # MiB of the measured module's parameters and buffers
    deploy: bool
    trained: bool | None
    bfloat16_weights: bool = False  # deployed with the dense parts on bfloat16 weights
    cuda_graphs: bool = False  # deployed with the dense parts replaying CUDA graphs
    breakdown_ms: dict[str, float] = field(default_factory=dict)
    # rows after the first of those measured together (measure_together): the first row's label, and the first
    # row's time over this row's, median of the rounds (> 1: this row is faster), with the middle half of the rounds
    speed_reference: str | None = None
    speed_ratio: float | None = None
    speed_ratio_middle_half: tuple[float, float] | None = None

    @property
    def label(self) -> str:
        """The target's name, and how it was deployed where it was (:func:`listing_label`)."""
        return listing_label(self.target, self.deploy, self.bfloat16_weights, self.cuda_graphs)

    def as_dict(self) -> dict:
        return asdict(self)


def gflops(module: torch.nn.Module, height: int, width: int) -> float | None:
    """Multiply-accumulates (G) of one image through ``module`` (a backbone, or a model in tensor mode), by
    mmengine's counter; None where the module does not trace."""
    from .flop_count import count_macs
    try:
        with torch.no_grad():
            return count_macs(module, (torch.randn(1, 3, height, width),)) / 1e9
    except Exception:  # noqa: BLE001 - the table then shows no FLOPs
        return None


#: How :func:`~.memory.call_peak_mb` measures, per device type.
MEMORY_KINDS = {'cuda': 'one call, CUDA allocator peak above the memory allocated before it',
                'cpu': 'one call, peak of its tensor allocations (profiler)'}


def prepare(target: Target, opts: Options) -> torch.device:
    """Move, fuse, convert and compile the target as the options say (in place)."""
    device = torch.device(opts.device)
    target.model.to(device)  # first: deploying on bfloat16 weights checks the device it will run on
    if opts.deploy:
        from ..deploy import optimize_for_inference
        summary = optimize_for_inference(target.model, **opts.deploy_options)
        print(f'{target.name}: {summary}', file=sys.stderr)
    if opts.channels_last:
        target.model.to(memory_format=torch.channels_last)
    if opts.compile_mode is not None:
        compiled_backbone = compiled(target.backbone, opts.compile_mode)
        if target.model is target.backbone:
            target.model = compiled_backbone
        elif hasattr(target.model, 'backbone'):
            target.model.backbone = compiled_backbone
        target.backbone = compiled_backbone
    return device


def _callables(target: Target, mode: str, opts: Options,
               device: torch.device) -> tuple[dict[str, Callable[[], object]], Callable[[], set[Size]]]:
    """The callables of the backbone, forward and predict modes, and what gives their images' sizes."""
    b, h, w = opts.batch_size, opts.height, opts.width
    if mode == 'backbone':
        x = torch.randn(b, 3, h, w, device=device)
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return {'total': lambda: target.backbone(x)}, lambda: {(h, w)}
    if target.kind == 'backbone':
        raise ValueError(f'mode {mode!r} needs a config target (a detector, segmentor or classifier)')
    model = target.model
    if opts.images == 'dataset':  # real content: a trained model's post-processing meets real detections
        packed = DatasetBatches(target, opts).next()  # the loader (and its workers) not kept past this batch
        sizes = image_sizes(packed)
    else:
        packed, sizes = synthetic_batch(target.kind, b, h, w), {(h, w)}
    data = model.data_preprocessor(packed, False)
    inputs, samples = data['inputs'], data['data_samples']
    if opts.channels_last:
        inputs = inputs.contiguous(memory_format=torch.channels_last)
    if mode == 'forward':
        return {'total': lambda: model(inputs, samples, mode='tensor')}, lambda: sizes
    if mode == 'predict':
        parts = {'total': lambda: model.test_step(packed),
                 'preprocess': lambda: model.data_preprocessor(packed, False),
                 'backbone': lambda: target.backbone(inputs)}
        if not getattr(model, 'with_roi_head', False):
            # Tensor mode runs the heads on what prediction runs them on, except in two-stage detectors: there it
            # runs the RoI head on every RPN proposal and the mask head on the first 100 RoIs, while prediction
            # runs them on the proposals and detections left after NMS, so their head and post-processing are
            # timed as one part (_breakdown).
            parts['forward'] = lambda: model(inputs, samples, mode='tensor')
        if getattr(model, 'neck', None) is not None:
            parts['backbone+neck'] = lambda: model.extract_feat(inputs)
        return parts, lambda: sizes
    raise ValueError(f'unknown mode {mode!r}; choose from {MODES}')


def _breakdown(timings: dict[str, Timing]) -> dict[str, float]:
    """Per-part milliseconds of a prediction from the medians of its separately timed parts: ``head`` and
    ``postprocess``, or, without a tensor-mode ``forward`` timing (two-stage detectors), ``head_and_postprocess``."""
    ms = {name: t.median * 1e3 for name, t in timings.items()}
    backbone = ms['backbone']
    neck = max(ms.get('backbone+neck', backbone) - backbone, 0.0)
    parts = {'preprocess': ms['preprocess'], 'backbone': backbone, 'neck': neck}
    if 'forward' in ms:
        parts['head'] = max(ms['forward'] - backbone - neck, 0.0)
        parts['postprocess'] = max(ms['total'] - ms['preprocess'] - ms['forward'], 0.0)
    else:
        parts['head_and_postprocess'] = max(ms['total'] - ms['preprocess'] - backbone - neck, 0.0)
    return {**parts, 'total': ms['total']}


#: An image's (height, width).
Size = tuple[int, int]


def image_sizes(packed: dict) -> set[Size]:
    """The (height, width) of the images of a packed batch (before the data preprocessor)."""
    return {tuple(image.shape[-2:]) for image in packed['inputs']}


def size_label(sizes: set[Size]) -> str:
    """``HxW`` of one size, or the range ``HxW-HxW`` (smallest and largest by pixels) of several."""
    ordered = sorted(sizes, key=lambda size: (size[0] * size[1], size))
    labels = [f'{h}x{w}' for h, w in ordered]
    return labels[0] if len(labels) == 1 else f'{labels[0]}-{labels[-1]}'


class DatasetBatches:
    """Data loading from the config's test dataset + ``test_step``, one batch per call, in order (the loader starts
    over when it runs out), remembering the sizes of the images it served: they are the dataset's, resized by its
    pipeline, not ``--shape``."""

    def __init__(self, target: Target, opts: Options) -> None:
        from mmengine.runner import Runner

        from ..tools.preflight import check_datasets
        check_datasets(target.cfg, ('test_dataloader',))
        loader_cfg = target.cfg.test_dataloader.copy()
        loader_cfg['batch_size'] = opts.batch_size
        self.loader = Runner.build_dataloader(loader_cfg)
        self.model = target.model
        self.image_sizes: set[Size] = set()
        self._stream = self._batches()

    def _batches(self) -> Iterator[dict]:
        while True:
            empty = True
            for batch in self.loader:
                empty = False
                yield batch
            if empty:
                raise ValueError('the test dataloader yields no batches')

    def next(self) -> dict:
        """The next packed batch (before the data preprocessor), its image sizes recorded."""
        batch = next(self._stream)
        self.image_sizes |= image_sizes(batch)
        return batch

    def __call__(self) -> object:
        return self.model.test_step(self.next())


@dataclass
class Job:
    """One row of a run: a prepared target (:func:`prepare`) measured in one mode with its listing's options."""

    target: Target
    mode: str
    opts: Options
    device: torch.device

    @property
    def label(self) -> str:
        return listing_label(self.target.name, self.opts.deploy, self.opts.bfloat16_weights, self.opts.cuda_graphs)


def _job_calls(job: Job) -> tuple[dict[str, Callable[[], object]], Callable[[], set[Size]]]:
    """The callables timed for ``job`` (``total``, the row's time, and in predict mode the parts of its breakdown), and
    what gives its images' sizes once they ran (a dataset's images are known as they are served)."""
    target, mode, opts, device = job.target, job.mode, job.opts, job.device
    size = {(opts.height, opts.width)}
    if mode == 'onnx':
        from .onnx_runtime import onnx_backbone_call
        return {'total': onnx_backbone_call(target.backbone, opts)}, lambda: size
    if mode == 'pipeline':
        if target.cfg is None:
            raise ValueError('mode pipeline needs a config target with a test dataset')
        batches = DatasetBatches(target, opts)
        return {'total': batches}, lambda: batches.image_sizes
    if mode == 'train':
        return {'total': training_iteration(target, opts.batch_size, opts.height, opts.width, device,
                                            deployed=opts.deploy, compiled=opts.compile_mode is not None,
                                            dtype=opts.dtype)}, lambda: size
    return _callables(target, mode, opts, device)


#: What the jobs measured in the same rounds must share.
SHARED_OPTIONS = ('device', 'batch_size', 'height', 'width', 'dtype', 'channels_last', 'warmup', 'repeats',
                  'time_budget', 'images')


def measure_together(jobs: Sequence[Job]) -> list[Result]:
    """Measure jobs of one mode and one input (device, batch, shape, precision) in the same rounds: every call of
    every job, the parts of a prediction's breakdown included, is timed round-robin by
    :func:`~.timing.time_interleaved`, so that the rows' ratios are measured under the same load and each row after
    the first gets its speed relative to the first row, a median of per-round ratios with the middle half of them
    beside it. Why: targets timed one after another carried the machine's drift between them into their ratios
    (the backbone tool measured ratio spreads of +-5-15% from run to run before it interleaved its candidates).
    The memory one call needs is measured on one more call of each job after the timed ones
    (:func:`~.memory.call_peak_mb`). In pipeline mode a loader with workers loads its next batch in the background
    during the other rows' calls, where in a run it would during its own: with the same data and pipeline in every
    row, each row's calls share the CPU with the same loading work."""
    if not jobs:
        raise ValueError('measure_together needs at least one job')
    first = jobs[0]
    for job in jobs[1:]:
        differing = [name for name in SHARED_OPTIONS if getattr(job.opts, name) != getattr(first.opts, name)]
        if job.mode != first.mode or job.device != first.device or differing:
            shared = ', '.join(differing) or 'input'
            raise ValueError(f'jobs measured together must share their mode, device and {shared}: '
                             f'{job.target.name} ({job.mode}) differs from {first.target.name} ({first.mode})')
    mode, opts, device = first.mode, first.opts, first.device
    grad = mode == 'train'
    # a training iteration sets up its mixed precision itself (autocast around its forward pass only)
    with contextlib.nullcontext() if grad else autocast(device.type, opts.dtype):
        prepared = [_job_calls(job) for job in jobs]
        calls = {f'{index}:{part}': call for index, (job_calls, _) in enumerate(prepared)
                 for part, call in job_calls.items()}
        timings = time_interleaved(calls, opts.batch_size, opts.warmup, opts.repeats, device, opts.time_budget,
                                   grad=grad)
        # ONNX Runtime allocates outside PyTorch: its memory is not measured
        peaks = [None if mode == 'onnx' else call_peak_mb(calls[f'{index}:total'], device, grad=grad)
                 for index in range(len(jobs))]
    per_job = [{part: timings[f'{index}:{part}'] for part in job_calls}
               for index, (job_calls, _) in enumerate(prepared)]
    results = [_result(job, parts, peak, sizes_of()) for job, parts, peak, (_, sizes_of) in
               zip(jobs, per_job, peaks, prepared)]
    reference = per_job[0]['total']
    for result, parts in zip(results[1:], per_job[1:]):
        ratios = paired_ratios(reference, parts['total'])
        result.speed_reference = results[0].label
        result.speed_ratio = statistics.median(ratios)
        result.speed_ratio_middle_half = quartiles(ratios)
    return results


def _row_gflops(job: Job, sizes: set[Size]) -> float | None:
    """MACs (G) per image of what the row measured, at its images' size: the backbone in backbone and ONNX modes, the
    whole model in tensor mode otherwise (none for a compiled model, or images of several sizes)."""
    if len(sizes) != 1:
        return None
    (height, width), = sizes
    if job.mode in ('backbone', 'onnx') or job.target.kind == 'backbone':
        return gflops(getattr(job.target.backbone, '_orig_mod', job.target.backbone), height, width)  # uncompiled
    if job.opts.compile_mode is None:
        return gflops(TensorMode(job.target).eval(), height, width)  # whole model, no pre/post-processing
    return None


def _result(job: Job, timings: dict[str, Timing], peak: float | None, sizes: set[Size]) -> Result:
    target, mode, opts, device = job.target, job.mode, job.opts, job.device
    total = timings['total']
    measured = target.backbone if mode in ('backbone', 'onnx') else target.model
    return Result(
        target=target.name, kind=target.kind, mode=mode, device=str(device), dtype=opts.dtype,
        batch=opts.batch_size, shape=size_label(sizes), images_per_s=total.images_per_second,
        latency_p50_ms=total.median * 1e3, latency_p90_ms=total.percentile(90) * 1e3,
        latency_p99_ms=total.percentile(99) * 1e3, peak_memory_mb=peak,
        memory_kind=MEMORY_KINDS[device.type] if peak is not None else 'not measured',
        page_faults_per_call=total.median_page_faults,
        params_m=count_params(measured), gflops=_row_gflops(job, sizes), weights_mb=weights_mb(measured),
        deploy=opts.deploy,
        bfloat16_weights=opts.bfloat16_weights, cuda_graphs=opts.cuda_graphs,
        trained=None if target.kind == 'backbone' else target.trained,
        breakdown_ms=_breakdown(timings) if mode == 'predict' else {})

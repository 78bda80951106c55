"""``tools/benchmark.py``: how fast is a backbone or a whole detection/segmentation/classification pipeline on this
machine, and where does the time go. Every target and mode runs in one invocation, so ratios are measured
together."""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
from pathlib import Path

import torch
from mmengine.config import DictAction

from ..models.eager_kernels import cpu_description
from ..models.winograd import DEFAULT_TILE, WINOGRAD_POINTS
from .allocator_option import add_allocator_argument, apply_allocator_argument
from .compilation import add_compile_arguments, compile_mode_from
from .inputs import DEFAULT_SHAPES, DEFAULT_SHAPES_HELP, count_type, device_type, shape_type
from .measure import CONFIG_MODES, MODES, Job, Options, Result, measure_together, prepare
from .memory import format_mb
from .precision import DTYPES
from .targets import Target, build_target, is_config_spec

#: The optimize_for_inference switches the command line sets (``--no-fused-kernels`` etc.), by argument name.
DEPLOY_SWITCHES = ('fused_kernels', 'winograd', 'winograd_tile', 'fold_batch_norms', 'roi_align', 'bfloat16',
                   'cuda_graphs')
#: Target suffixes: TARGET@SUFFIX deploys that listing of a target with these optimize_for_inference switches (on
#: top of the command line's), so that float32 and bfloat16 deployments are timed in one run.
TARGET_SUFFIXES = {'deploy': {}, 'deploy-bf16': {'bfloat16': True}, 'deploy-cuda-graphs': {'cuda_graphs': True}}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='Throughput of EfficientViT and baseline backbones and of whole pipelines, CPU or GPU.',
        epilog='examples:\n'
               '  tools/benchmark.py evit_m4 timm:efficientvit_m4 resnet50 swin-t --shape 224x224 --batch-size 16\n'
               '  tools/benchmark.py configs/retinanet_evit_m4.py --modes predict --shape 800x1333 '
               '--checkpoint ckpt.pth\n'
               '  tools/benchmark.py configs/r50.py configs/evit.py@deploy --modes pipeline '
               '--checkpoint configs/r50.py=r50.pth --checkpoint configs/evit.py=evit.pth\n'
               '  tools/benchmark.py configs/retinanet_evit_m4.py@deploy '
               'configs/retinanet_evit_m4.py@deploy-cuda-graphs --device cuda --dtype fp16 --modes predict '
               '--shape 800x1333\n'
               '\n'
               'memory columns: "call peak MB" is the most memory one steady-state call allocates above what was '
               'allocated before it (activations, outputs, workspaces: CUDA allocator statistics on a GPU, the '
               "profiler's tensor allocations on the CPU), measured on one more call after the timed ones; "
               '"weights MB" is the parameters and buffers of the measured module.\n',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('targets', nargs='+', help='config files, evit_m0..evit_m5, resnet18, resnet50, swin-t, '
                                               'timm:<model>; append @deploy to deploy one target, @deploy-bf16 '
                                               'to deploy it on bfloat16 weights, @deploy-cuda-graphs to deploy it '
                                               'replaying CUDA graphs (GPU) (a target may be listed several ways)')
    p.add_argument('--modes', nargs='+', default=['backbone'], choices=MODES,
                   help='backbone: backbone only; forward: model in tensor mode; predict: test_step with a '
                        'per-stage breakdown (two-stage detectors: head and post-processing as one); pipeline: '
                        'data loading + test_step; train: one training iteration without data loading (the '
                        "config's train_step and optimizer on a synthetic batch with ground truth, with --dtype "
                        "fp16/bf16 tools/train.py --amp's wrapper; backbones: forward, backward, AdamW), on a copy of "
                        'the target; onnx: backbone in ONNX Runtime')
    p.add_argument('--device', type=device_type, default='cpu', help='cpu, cuda or cuda:N')
    p.add_argument('--batch-size', type=count_type(1), default=1)
    p.add_argument('--shape', nargs='+', type=shape_type(),
                   help=f'HxW or N for NxN, one or more ({DEFAULT_SHAPES_HELP})')
    p.add_argument('--dtype', choices=sorted(DTYPES), default='fp32', help='autocast precision')
    p.add_argument('--images', choices=('synthetic', 'dataset'), default='synthetic',
                   help="forward and predict modes: random images at --shape, or the first batch of each config's "
                        'test set, resized by its pipeline (--shape unused), whose content gives a trained model\'s '
                        'post-processing real detections to work on')
    p.add_argument('--channels-last', action='store_true')
    add_compile_arguments(p, 'the backbone')
    p.add_argument('--deploy', action='store_true',
                   help='deploy every target (evit_mm.deploy.optimize_for_inference: Conv+BN folding, fused '
                        'kernels, Winograd 3x3); TARGET@deploy deploys one target only')
    p.add_argument('--no-fused-kernels', dest='fused_kernels', action='store_const', const=False, default=None,
                   help='with deploy: keep ReLUs out of the conv kernels and 1x1 convs as convs')
    p.add_argument('--no-winograd', dest='winograd', action='store_false',
                   help='with deploy: keep direct 3x3 convolutions')
    p.add_argument('--no-fold-batch-norms', dest='fold_batch_norms', action='store_false',
                   help='with deploy: keep the BatchNorms of necks, heads and other backbones as they are')
    p.add_argument('--no-roi-align', dest='roi_align', action='store_false',
                   help="with deploy: keep mmcv's RoIAlign kernel (two-stage detectors)")
    p.add_argument('--bfloat16', action='store_true',
                   help='with deploy: backbone, neck and dense heads on bfloat16 weights, float32 in and out (not '
                        'exact; fast on CPUs with AVX512-BF16 or AMX, and on GPUs); --dtype bf16 autocasts instead')
    p.add_argument('--cuda-graphs', action='store_true',
                   help='with deploy: backbone, neck and dense heads replay CUDA graphs, one per input shape (GPU; '
                        'evit_mm.deploy.use_cuda_graphs)')
    p.add_argument('--winograd-tile', type=int, choices=sorted(WINOGRAD_POINTS), default=DEFAULT_TILE,
                   help='with deploy: the largest Winograd output tile (2: F(2x2,3x3) everywhere)')
    p.add_argument('--threads', type=count_type(1), help='CPU threads (torch.set_num_threads)')
    p.add_argument('--warmup', type=count_type(0), default=3)
    p.add_argument('--repeats', type=count_type(1), default=10)
    p.add_argument('--time-budget', type=float,
                   help='seconds per mode and shape (their rows share the rounds) instead of a fixed --repeats')
    p.add_argument('--checkpoint', action='append', default=[], metavar='[TARGET=]PATH',
                   help='weights for config targets (realistic post-processing times): PATH for every config target, '
                        'TARGET=PATH for one (TARGET as listed, e.g. configs/a.py@deploy, or its config for all its '
                        'listings); repeat the option for several')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, help='override entries of config targets')
    p.add_argument('--json', help='write results as JSON')
    p.add_argument('--csv', help='write results as CSV')
    p.add_argument('--plot', help='write a PNG of images/s against GFLOPs')
    add_allocator_argument(p)
    args = p.parse_args(argv)
    for spec in args.targets:
        if '@' in spec and spec.partition('@')[2] not in TARGET_SUFFIXES:
            p.error(f'unknown target suffix in {spec!r}; choose from '
                    + ', '.join(f'@{suffix}' for suffix in TARGET_SUFFIXES))
    backbones = [spec for spec in args.targets if not is_config_spec(spec)]
    misfits = [mode for mode in args.modes if mode in CONFIG_MODES]
    if backbones and misfits:
        p.error(f'mode {misfits[0]} needs a config target (a detector, segmentor or classifier); {backbones[0]} is a '
                'backbone: time it with --modes backbone, train or onnx')
    args.checkpoints = _checkpoints_by_target(p, args.checkpoint, args.targets)
    if args.images == 'dataset' and not {'forward', 'predict'} & set(args.modes):
        p.error('--images dataset applies to the forward and predict modes (pipeline mode always loads the test set); '
                f'none was asked for (--modes {" ".join(args.modes)})')
    graphs = args.cuda_graphs or any(spec.endswith('@deploy-cuda-graphs') for spec in args.targets)
    if graphs and not args.device.startswith('cuda'):
        p.error(f'CUDA graphs replay on a GPU only: --cuda-graphs and @deploy-cuda-graphs need --device cuda, got '
                f'--device {args.device}')
    return args


def _checkpoints_by_target(parser: argparse.ArgumentParser, entries: list[str],
                            targets: list[str]) -> dict[str, str]:
    """The checkpoint of each listed config target, from ``--checkpoint`` entries ``PATH`` (every config target
    without an entry of its own) and ``TARGET=PATH`` (one listing as given, or a config for all its listings); a
    usage error names what does not fit."""
    configs = [spec for spec in targets if is_config_spec(spec)]
    own: dict[str, str] = {}
    every: list[str] = []
    for entry in entries:
        key, sep, path = entry.partition('=')
        if sep and (key in targets or key in {spec.partition('@')[0] for spec in targets}):
            if not is_config_spec(key):
                parser.error(f'--checkpoint {entry}: checkpoints apply to config targets, not to backbone names')
            own[key] = path
        elif sep and not os.path.isfile(entry):
            parser.error(f'--checkpoint {entry}: {key} is not a listed target; listed: {", ".join(targets)}')
        else:
            every.append(entry)
    if len(every) > 1:
        parser.error(f'--checkpoint: one PATH for every config target at most (got {", ".join(every)}); give the '
                     'others as TARGET=PATH')
    if every and not configs:
        parser.error(f'--checkpoint {every[0]}: checkpoints apply to config targets, and none is listed')
    default = every[0] if every else None
    chosen = {spec: own.get(spec) or own.get(spec.partition('@')[0]) or default for spec in configs}
    return {spec: path for spec, path in chosen.items() if path}


def format_table(results: list[Result]) -> str:
    head = ('target', 'mode', 'batch', 'shape', 'img/s', 'p50 ms', 'p90 ms', 'p99 ms', 'speed vs first',
            'call peak MB', 'weights MB', 'page faults', 'params M', 'GFLOPs')
    rows = [head]
    for r in results:
        rows.append((r.label, r.mode, str(r.batch), r.shape,
                     f'{r.images_per_s:.2f}', f'{r.latency_p50_ms:.1f}', f'{r.latency_p90_ms:.1f}',
                     f'{r.latency_p99_ms:.1f}', _speed_cell(r), format_mb(r.peak_memory_mb), format_mb(r.weights_mb),
                     '-' if r.page_faults_per_call is None else f'{r.page_faults_per_call:.0f}', f'{r.params_m:.2f}',
                     '-' if r.gflops is None else f'{r.gflops:.2f}'))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ['| ' + ' | '.join(c.ljust(w) for c, w in zip(row, widths)) + ' |' for row in rows]
    lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
    if any(r.speed_ratio is not None for r in results):
        lines += ['', SPEED_NOTE]
    breakdowns = [r for r in results if r.breakdown_ms]
    if breakdowns:
        lines += ['', '| target | shape | preprocess | backbone | neck | head | post-process | total (ms) |',
                  '|---|---|---|---|---|---|---|---|']
        for r in breakdowns:
            b = r.breakdown_ms
            if 'head_and_postprocess' in b:  # two-stage detectors: one part (measure._breakdown)
                head, post = f"{b['head_and_postprocess']:.1f} (with post-process)", 'in head'
            else:
                head, post = f"{b['head']:.1f}", f"{b['postprocess']:.1f}"
            cells = [f'{b[k]:.1f}' for k in ('preprocess', 'backbone', 'neck')] + [head, post, f"{b['total']:.1f}"]
            lines.append(f'| {r.label} | {r.shape} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


#: What the "speed vs first" column means, printed under the table.
SPEED_NOTE = ('speed vs first: the first row of the same mode and shape over this row, time per call, median of the '
              'rounds in which all of them ran (> 1: this row is faster), with the middle half of the rounds in '
              'brackets')


def _speed_cell(r: Result) -> str:
    if r.speed_ratio is None:
        return '-'
    low, high = r.speed_ratio_middle_half
    return f'{r.speed_ratio:.2f} ({low:.2f}-{high:.2f})'


def write_outputs(results: list[Result], args: argparse.Namespace) -> None:
    records = [r.as_dict() for r in results]
    env = dict(torch=torch.__version__, device=args.device, threads=torch.get_num_threads(),
               cpu=cpu_description(), python=platform.python_version(),
               keep_freed_memory=args.keep_freed_memory)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(environment=env, results=records), indent=2))
    if args.csv:
        with open(args.csv, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=[k for k in records[0] if k != 'breakdown_ms'] +
                                    ['breakdown_ms'])
            writer.writeheader()
            for record in records:
                writer.writerow(dict(record, breakdown_ms=json.dumps(record['breakdown_ms'])))
    if args.plot:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            if r.gflops is not None:
                ax.scatter(r.gflops, r.images_per_s)
                ax.annotate(f'{r.target} ({r.mode})', (r.gflops, r.images_per_s), fontsize=7)
        ax.set(xlabel='GFLOPs (MACs) per image (backbone, or whole model in tensor mode)', ylabel='images/s',
               title=f'{args.device}, batch {args.batch_size}, {args.dtype}')
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = apply_allocator_argument(args)
    where = f'{args.device} ({cpu_description()})' if args.device == 'cpu' else args.device
    print(f'torch {torch.__version__} | {where} | {torch.get_num_threads()} threads | {args.dtype} | {allocator}',
          file=sys.stderr)
    deploy_options = {name: getattr(args, name) for name in DEPLOY_SWITCHES}
    prepared: dict[str, tuple[Target, torch.device]] = {}
    for spec in args.targets:  # each listing built, deployed, converted and compiled once
        if spec not in prepared:
            name, _, suffix = spec.partition('@')  # parse_args allows only TARGET_SUFFIXES
            target = build_target(name, args.checkpoints.get(spec), args.cfg_options)
            device = prepare(target, _options(args, spec, deploy_options, DEFAULT_SHAPES[target.kind]))
            for note in target.notes:
                print(f'WARNING [{target.name}]: {note}', file=sys.stderr)
            prepared[spec] = target, device
    # the rows of one mode and input size are measured together, in the same rounds (measure_together); without
    # --shape, each target at its kind's default size
    groups: dict[tuple[str, int, int], list[Job]] = {}
    for mode in args.modes:
        for shape in args.shape or [None]:
            for spec in args.targets:
                target, device = prepared[spec]
                h, w = shape or DEFAULT_SHAPES[target.kind]
                groups.setdefault((mode, h, w), []).append(
                    Job(target, mode, _options(args, spec, deploy_options, (h, w)), device))
    results: list[Result] = []
    for index, ((mode, h, w), jobs) in enumerate(groups.items(), 1):
        names = ', '.join(job.label for job in jobs)
        print(f'[{index}/{len(groups)}] {mode} at {args.batch_size}x{h}x{w}: {names} ...', file=sys.stderr, flush=True)
        for result in measure_together(jobs):
            print(f'    {result.label}: {result.images_per_s:.2f} img/s, p50 {result.latency_p50_ms:.1f} ms',
                  file=sys.stderr)
            results.append(result)
    print(format_table(results))
    write_outputs(results, args)
    return 0


def _options(args: argparse.Namespace, spec: str, deploy_options: dict, shape: tuple[int, int]) -> Options:
    """The measurement options of one listing of a target (``spec``, with its ``@`` suffix) at ``shape``."""
    suffix = spec.partition('@')[2]
    return Options(args.device, args.batch_size, *shape, args.dtype, args.channels_last, compile_mode_from(args),
                   deploy=args.deploy or bool(suffix),
                   deploy_options={**deploy_options, **TARGET_SUFFIXES.get(suffix, {})}, warmup=args.warmup,
                   repeats=args.repeats, time_budget=args.time_budget, images=args.images)

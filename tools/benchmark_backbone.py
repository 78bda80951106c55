#!/usr/bin/env python
"""Images/s of evit_mm's EfficientViT backbone against timm's (features_only, same weights): as built,
evit_mm deployed against timm as shipped and against timm with the same Conv+BN fusion, optionally both compiled
and a training step, all measured interleaved in one run; ratios are paired medians over rounds, with the
middle half of the per-round ratios (25th-75th percentile) beside them.

    python tools/benchmark_backbone.py --arch m4 --threads 2
    python tools/benchmark_backbone.py --arch m4 --device cuda --dtype fp16 --shapes 1x224x224 256x224x224 --train
    python tools/benchmark_backbone.py --arch m4 --device cuda --dtype fp16 --shapes 1x224x224 --cuda-graphs
    python tools/benchmark_backbone.py --arch m4 --device cuda --dtype fp16 --shapes 1x224x224 --train --device-time
    python tools/benchmark_backbone.py --arch m4 --threads 2 --shapes 1x800x1344 --train --backward-nodes shape
    python tools/benchmark_backbone.py --arch m4 --threads 2 --keep-freed-memory
    python tools/benchmark_backbone.py --arch m4 --threads 2 --shapes 16x224x224 --compute-rates
    python tools/benchmark_backbone.py --arch m4 --threads 2 --bfloat16
    python tools/benchmark_backbone.py --arch m4 --threads 2 --parts
    python tools/benchmark_backbone.py --arch m4 --threads 2 --train --isolated 4
    python tools/benchmark_backbone.py --arch m4 --shapes 16x224x224 --train --dtype bf16 --precision-profile

The page-fault column counts the process's minor page faults per call (fresh pages the kernel maps in and zeroes,
about 1 us each on a CPU machine); --keep-freed-memory makes glibc keep freed memory for reuse, for both models. Models
in one process share its heap, so each one's page faults depend on the others; --isolated times each model alone in
fresh processes, as deployed. The last column is the memory one more call of each model allocates above what was
allocated before it (tensors: CUDA's allocator statistics on a GPU, the profiler's allocation events on the CPU).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from evit_mm.benchmark.allocator_option import add_allocator_argument, apply_allocator_argument  # noqa: E402
from evit_mm.benchmark.backbone import (  # noqa: E402
    backward_nodes_table, compare, compute_rates_table, device_time_table, format_rows, host_work_table,
    part_times_table, precision_profile_table)
from evit_mm.benchmark.compilation import add_compile_arguments, compile_mode_from  # noqa: E402
from evit_mm.benchmark.inputs import count_type, device_type, shape_type  # noqa: E402
from evit_mm.benchmark.isolated import compare_isolated  # noqa: E402
from evit_mm.benchmark.precision import DTYPES  # noqa: E402
from evit_mm.models.backbones.efficientvit import ARCH_SETTINGS  # noqa: E402
from evit_mm.models.eager_kernels import cpu_description  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--arch', default='m4', choices=sorted(ARCH_SETTINGS))
    parser.add_argument('--shapes', nargs='+', type=shape_type(dims=3), default=[(16, 224, 224), (1, 800, 1344)],
                        help='BxHxW per case (default: 16x224x224 1x800x1344)')
    parser.add_argument('--device', type=device_type, default='cpu', help='cpu, cuda or cuda:N')
    parser.add_argument('--dtype', choices=sorted(DTYPES), default='fp32',
                        help='autocast precision of the timed calls (the equivalence check runs in float32)')
    parser.add_argument('--threads', type=count_type(1), default=None,
                        help='torch CPU threads (default: torch default)')
    parser.add_argument('--warmup', type=count_type(0), default=3)
    parser.add_argument('--repeats', type=count_type(1), default=10)
    parser.add_argument('--train', action='store_true', help='also time a training step (forward + backward)')
    add_compile_arguments(parser, 'both deployed models too (inductor, freezing) and time them')
    parser.add_argument('--ablate', action='store_true',
                        help='also time evit_mm with each fast path switched (eval without BatchNorm folding, deploy '
                             'with plain ops, with CPU fused kernels and GEMMs, without prepacked weights; with '
                             '--train, training without and with both GEMM convs and with each alone (1x1 GEMMs, '
                             'im2col weight gradients) and, with --dtype bf16, without the '
                             'float32 input gradients of strided depthwise convs; the defaults of the CPU kernels and '
                             'GEMM convs depend on the CPU), in the same rounds')
    parser.add_argument('--bfloat16', action='store_true',
                        help='also time evit_mm deployed and timm as shipped on bfloat16 weights (float32 in and out; '
                             'fast on CPUs with AVX512-BF16 or AMX), in the same rounds; --dtype bf16 autocasts')
    parser.add_argument('--cuda-graphs', action='store_true',
                        help='also time evit_mm deployed and timm fused replaying CUDA graphs (GPU; '
                             'evit_mm.deploy.use_cuda_graphs on both), in the same rounds')
    parser.add_argument('--host-work', action='store_true',
                        help='also count operators and module calls per forward (what a GPU waits for at batch 1)')
    parser.add_argument('--backward-nodes', nargs='?', const='kind', choices=('kind', 'shape'),
                        help='also time the training step\'s backward pass per autograd node, evit_mm against timm, '
                             'at the first shape (hooks on the nodes, not the profiler); "shape" keys convolution, '
                             'BatchNorm and ReLU nodes by their shapes')
    parser.add_argument('--compute-rates', action='store_true',
                        help='also time the GEMMs and convolutions of evit_mm deployed, timm and timm fused at the '
                             'first shape (with --train: of both training steps too), in place and alone (CPU), and '
                             'print the bound they put on the ratio')
    parser.add_argument('--device-time', action='store_true',
                        help='also profile every shape: per call of each model (with --train: each training step), '
                             'the wall time against the time the device computes (GPU kernels; on a CPU the '
                             'operators): how host-bound each is, and the ratio once both are device-bound')
    parser.add_argument('--precision-profile', action='store_true',
                        help='also profile evit_mm deployed (with --train: its training step) per operator and input '
                             'shape in float32 and under --dtype, at the first shape, and list the operators the lower '
                             'precision makes slowest (device time on a GPU): kernels that are slow in one precision')
    parser.add_argument('--parts', action='store_true',
                        help='also time the stem and each stage of evit_mm deployed and timm as shipped inside the '
                             'same calls, at every shape: which part makes the ratio')
    parser.add_argument('--isolated', type=count_type(1), metavar='ROUNDS',
                        help='also time evit_mm deployed and timm as shipped (with --train: both training steps) each '
                             'alone in a fresh process, ROUNDS processes each, alternating (CPU, float32): what a '
                             'deployment running one model sees, without the other model\'s memory in its heap')
    add_allocator_argument(parser)
    args = parser.parse_args(argv)
    if args.isolated and (args.device != 'cpu' or args.dtype != 'fp32'):
        parser.error('--isolated times float32 on the CPU only; drop --device/--dtype')
    if args.precision_profile and args.dtype == 'fp32':
        parser.error('--precision-profile compares float32 with a lower precision: add --dtype bf16 (CPU) or fp16 '
                     '(GPU)')
    if args.cuda_graphs and not args.device.startswith('cuda'):
        parser.error('--cuda-graphs needs --device cuda (CUDA graphs replay on a GPU only), got --device '
                     f'{args.device}')
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = tuple(args.shapes)
    where = torch.cuda.get_device_name(args.device) if args.device.startswith('cuda') else f'cpu ({cpu_description()})'
    allocator = apply_allocator_argument(args)
    print(f'torch {torch.__version__}, {where}, {torch.get_num_threads()} CPU threads, {args.dtype}, {allocator}')
    print(format_rows(compare(args.arch, shapes, args.warmup, args.repeats, args.train, compile_mode_from(args),
                              args.device, args.dtype, args.ablate, args.bfloat16, args.cuda_graphs)))
    if args.isolated:
        print()
        print(format_rows(compare_isolated(args.arch, shapes, args.isolated, args.warmup, args.repeats, args.train,
                                           args.threads, args.keep_freed_memory)))
    if args.parts:
        for shape in shapes:
            print()
            print(part_times_table(args.arch, shape, args.warmup, args.repeats, args.device, args.dtype))
    if args.host_work:
        print()
        print(host_work_table(args.arch, shapes[0]))
    if args.compute_rates:
        print()
        print(compute_rates_table(args.arch, shapes[0], repeats=args.repeats))
        if args.train:
            print()
            print(compute_rates_table(args.arch, shapes[0], repeats=args.repeats, train=True))
    if args.device_time:
        for shape in shapes:
            print()
            print(device_time_table(args.arch, shape, args.device, args.dtype, args.train, args.cuda_graphs,
                                    repeats=args.repeats))
    if args.precision_profile:
        print()
        print(precision_profile_table(args.arch, shapes[0], args.device, args.dtype, args.train))
    if args.backward_nodes:
        print()
        print(backward_nodes_table(args.arch, shapes[0], repeats=args.repeats, by_shape=args.backward_nodes == 'shape',
                                   device=args.device))


if __name__ == '__main__':
    main()

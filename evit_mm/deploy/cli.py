"""``tools/export_onnx.py``: ONNX export of a backbone or of a config's model in tensor mode, checked with ORT."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ..benchmark.inputs import DEFAULT_SHAPES, DEFAULT_SHAPES_HELP, add_image_shape_option
from ..benchmark.targets import build_target
from ..benchmark.tensor_mode import TensorMode
from ..tools.preflight import PreflightError
from .onnx_export import EXPORTERS, check_onnx, dynamo_exporter_missing, export_onnx
from .program_export import SizeSpecialisedError
from .optimize import optimize_for_inference


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description='Export to ONNX (dynamic batch/height/width) and verify')
    parser.add_argument('target', help='config file or evit_m0..evit_m5')
    parser.add_argument('output', help='.onnx file')
    parser.add_argument('--checkpoint', help='weights for a config target')
    add_image_shape_option(parser, f"HxW, H W or N for NxN, used for tracing (a segmentor's only size; "
                           f"{DEFAULT_SHAPES_HELP})")
    parser.add_argument('--deploy', action='store_true',
                        help='export the deployed model (optimize_for_inference: Conv+BN folded)')
    parser.add_argument('--exporter', choices=EXPORTERS, default='torchscript',
                        help="torch's ONNX exporter: torchscript (default; every supported torch), or dynamo, which "
                             'translates a torch.export program (torch >= 2.7 with onnxscript; segmentors keep dynamic '
                             'sizes where their heads allow)')
    parser.add_argument('--opset', type=int, help='ONNX opset (default: 17 with torchscript, 18 with dynamo)')
    parser.add_argument('--atol', type=float, default=1e-3, help='largest accepted ORT-PyTorch difference')
    args = parser.parse_args(argv)
    if args.exporter == 'dynamo' and (reason := dynamo_exporter_missing()):
        raise PreflightError(f'--exporter dynamo {reason}; --exporter torchscript works with every supported torch')
    target = build_target(args.target, args.checkpoint)
    module = TensorMode(target).eval()
    if module.needs_samples:  # proposals from test-time metadata: a two-stage detector
        raise PreflightError('two-stage detectors (RPN + RoI heads) are not exported in tensor mode; export the '
                             'backbone (evit_m*) or a single-stage detector/segmentor/classifier')
    if args.deploy:  # the exported graph has the folded convs; fused kernels and Winograd are eager-CPU only
        print(optimize_for_inference(target.model))
    height, width = args.shape or DEFAULT_SHAPES[target.kind]
    example = torch.randn(1, 3, height, width)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)  # as --work-dir: made if missing
    # mmseg's decode heads compute upsampling sizes with Python numbers, which tracing freezes: the TorchScript
    # exporter gives a segmentor's graph for the export size only (dynamic batch); the dynamo exporter's program
    # is checked at a second size and falls back to that where the head fixes a size (FPNHead's Upsample)
    dynamic_hw = target.kind != 'segmentor' or args.exporter == 'dynamo'
    try:
        names = export_onnx(module, example, args.output, opset=args.opset, dynamic_hw=dynamic_hw,
                            exporter=args.exporter)
    except SizeSpecialisedError as error:
        if target.kind != 'segmentor':
            raise PreflightError(str(error)) from error
        print(f'note: {error}')
        dynamic_hw = False
        names = export_onnx(module, example, args.output, opset=args.opset, dynamic_hw=False, exporter=args.exporter)
    if not dynamic_hw:
        print(f'note: segmentor exported for {height}x{width} inputs only (its head fixes upsampling sizes when '
              'traced); export once per input size')
    checks = [torch.randn(1, 3, height, width),
              torch.randn(2, 3, height + 37, width - 19) if dynamic_hw else torch.randn(2, 3, height, width)]
    errors = check_onnx(args.output, module, checks)
    sizes = ', '.join(f'{tuple(x.shape)}: {e:.2e}' for x, e in zip(checks, errors))
    print(f'wrote {args.output} ({len(names)} outputs); max |ORT - PyTorch| at {sizes}')
    if max(errors) > args.atol:
        raise SystemExit(f'ONNX outputs differ from PyTorch by more than {args.atol}')
    return 0

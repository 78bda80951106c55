"""``tools/get_flops.py``: parameters and FLOPs of a config's model (tensor mode) or a backbone at a shape."""
from __future__ import annotations

import argparse

import torch
from mmengine.analysis.print_helper import complexity_stats_table

from .flop_count import count_params, macs_analyzer
from .inputs import DEFAULT_SHAPES, DEFAULT_SHAPES_HELP, add_image_shape_option, count_type
from .targets import build_target
from .tensor_mode import TensorMode


def complexity(spec: str, shape: tuple[int, int] | None = None, table_depth: int | None = None) -> dict:
    """mmengine's counter on the model in tensor mode (for configs) or the backbone; FLOPs are MACs.

    Args:
        spec: a config file or backbone name (:func:`~evit_mm.benchmark.targets.build_target`).
        shape: input ``(height, width)``; default: the target kind's (:data:`~evit_mm.benchmark.inputs.DEFAULT_SHAPES`).
        table_depth: also return mmengine's per-module table (``'table'``: FLOPs and parameters of the model's
            modules down to this depth: for a config's model 1 = backbone, neck, heads, 2 = their parts; for a
            backbone 1 = patch embedding and stages).
    """
    target = build_target(spec)
    height, width = shape or DEFAULT_SHAPES[target.kind]
    module = TensorMode(target).eval()
    with torch.no_grad():
        analyzer = macs_analyzer(module, (torch.randn(1, 3, height, width),))
    # the backbone's share from the same trace (its module's count), not a second one
    backbone_name = next(name for name, part in module.named_modules() if part is target.backbone)
    total, backbone = int(analyzer.total()), int(analyzer.total(backbone_name))
    result = dict(target=target.name, shape=f'{height}x{width}', gflops=total / 1e9,
                  params_m=count_params(target.model),
                  backbone_gflops=backbone / 1e9,
                  backbone_params_m=count_params(target.backbone))
    if table_depth is not None:  # mmengine's table (its rows skip modules with one child, e.g. TensorMode's)
        result['table'] = complexity_stats_table(analyzer, max_depth=table_depth, show_param_shapes=False)
    return result


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description='Parameters and FLOPs (MACs) of a config or backbone')
    parser.add_argument('target', help='config file, evit_m0..evit_m5, resnet50, swin-t, timm:<model>')
    add_image_shape_option(parser, f'HxW, H W or N for NxN ({DEFAULT_SHAPES_HELP})')
    parser.add_argument('--show-table', action='store_true',
                        help="also print mmengine's table of FLOPs and parameters per module")
    parser.add_argument('--max-depth', type=count_type(1), default=2,
                        help="with --show-table: module depth of the table's rows (a config's model: 1 = backbone, "
                             'neck and heads, 2 = their parts; default 2)')
    args = parser.parse_args(argv)
    c = complexity(args.target, args.shape, args.max_depth if args.show_table else None)
    print(f"{c['target']} at {c['shape']} (tensor mode, no pre/post-processing):\n"
          f"  whole model: {c['gflops']:.2f} GFLOPs (MACs), {c['params_m']:.2f} M parameters\n"
          f"  backbone:    {c['backbone_gflops']:.2f} GFLOPs (MACs), {c['backbone_params_m']:.2f} M parameters")
    if 'table' in c:
        print(c['table'])
    return 0

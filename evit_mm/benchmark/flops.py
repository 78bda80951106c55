"""``tools/get_flops.py``: parameters and FLOPs of a config's model (tensor mode) or a backbone at a shape."""
from __future__ import annotations

import argparse

import torch

from .flop_count import count_macs, count_params
from .inputs import DEFAULT_SHAPES, DEFAULT_SHAPES_HELP, add_image_shape_option
from .targets import build_target
from .tensor_mode import TensorMode


def complexity(spec: str, shape: tuple[int, int] | None = None) -> dict:
    """mmengine's counter on the model in tensor mode (for configs) or the backbone; FLOPs are MACs.

    Args:
        spec: a config file or backbone name (:func:`~evit_mm.benchmark.targets.build_target`).
        shape: input ``(height, width)``; default: the target kind's (:data:`~evit_mm.benchmark.inputs.DEFAULT_SHAPES`).
    """
    target = build_target(spec)
    height, width = shape or DEFAULT_SHAPES[target.kind]
    module = TensorMode(target).eval()
    x = torch.randn(1, 3, height, width)
    with torch.no_grad():
        total, backbone = count_macs(module, (x,)), count_macs(target.backbone, (x,))
    return dict(target=target.name, shape=f'{height}x{width}', gflops=total / 1e9,
                params_m=count_params(target.model),
                backbone_gflops=backbone / 1e9,
                backbone_params_m=count_params(target.backbone))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description='Parameters and FLOPs (MACs) of a config or backbone')
    parser.add_argument('target', help='config file, evit_m0..evit_m5, resnet50, swin-t, timm:<model>')
    add_image_shape_option(parser, f'HxW, H W or N for NxN ({DEFAULT_SHAPES_HELP})')
    args = parser.parse_args(argv)
    c = complexity(args.target, args.shape)
    print(f"{c['target']} at {c['shape']} (tensor mode, no pre/post-processing):\n"
          f"  whole model: {c['gflops']:.2f} GFLOPs (MACs), {c['params_m']:.2f} M parameters\n"
          f"  backbone:    {c['backbone_gflops']:.2f} GFLOPs (MACs), {c['backbone_params_m']:.2f} M parameters")
    return 0

"""``tools/get_flops.py``: parameters and FLOPs of a config's model (tensor mode) or a backbone at a shape."""
from __future__ import annotations

import argparse

import torch

from .flop_count import count_macs, count_params
from .inputs import parse_shape
from .targets import build_target
from .tensor_mode import TensorMode


def complexity(spec: str, height: int, width: int) -> dict:
    """mmengine's counter on the model in tensor mode (for configs) or the backbone; FLOPs are MACs."""
    target = build_target(spec)
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
    parser.add_argument('--shape', default='224x224', help='HxW')
    args = parser.parse_args(argv)
    height, width = parse_shape(args.shape)
    c = complexity(args.target, height, width)
    print(f"{c['target']} at {c['shape']} (tensor mode, no pre/post-processing):\n"
          f"  whole model: {c['gflops']:.2f} GFLOPs (MACs), {c['params_m']:.2f} M parameters\n"
          f"  backbone:    {c['backbone_gflops']:.2f} GFLOPs (MACs), {c['backbone_params_m']:.2f} M parameters")
    return 0

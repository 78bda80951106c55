"""Run under torchrun by test_detection_e2e: train like tools/train.py, then save each rank's weights."""
from __future__ import annotations

import sys

import torch
from mmengine.dist import get_rank
from mmengine.runner import Runner

from evit_mm.engine import prepare_cpu_distributed
from evit_mm.tools.config_options import load_config
from evit_mm.tools.train import parse_args

if __name__ == '__main__':
    args = parse_args(sys.argv[1:])
    cfg = load_config(args)
    prepare_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    # Parameters, not buffers: BatchNorm running statistics are per rank (broadcast_buffers=False, as mmdet).
    params = {name: p.detach() for name, p in model.named_parameters()}
    torch.save(params, f'{cfg.work_dir}/rank{get_rank()}_weights.pth')

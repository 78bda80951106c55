"""Run under torchrun by test_detection_e2e: train like tools/train.py, then save each rank's weights."""
from __future__ import annotations

import sys

import torch
from mmengine.dist import get_rank
from mmengine.runner import Runner

from evit_mm.tools.config_options import load_config
from evit_mm.tools.train import parse_args

if __name__ == '__main__':
    args = parse_args(sys.argv[1:])
    cfg = load_config(args)
    runner = Runner.from_cfg(cfg)
    runner.train()
    model = runner.model.module if hasattr(runner.model, 'module') else runner.model
    torch.save(model.state_dict(), f'{cfg.work_dir}/rank{get_rank()}_weights.pth')

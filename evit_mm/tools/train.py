"""``tools/train.py``: mmdet/mmseg-style training entry point for every task of evit_mm."""
from __future__ import annotations

import argparse

from mmengine.device import get_device
from mmengine.runner import Runner

from ..benchmark.allocator_option import add_allocator_argument, apply_allocator_argument
from ..checkpoint import local_checkpoint
from ..engine import prepare_cpu_distributed
from .config_options import add_common_arguments, apply_resume, enable_amp, enable_auto_scale_lr, load_config
from .cpu_roi_align import use_separable_roi_align_on_cpu
from .preflight import check_backbone_neck, check_checkpoint_fits, run_preflight, runner_model


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector, segmentor or classifier with EfficientViT')
    parser.add_argument('config', help='config file, e.g. configs/retinanet_evit_m4.py')
    parser.add_argument('--amp', action='store_true',
                        help='mixed-precision training: float16 with loss scaling on GPUs, bfloat16 autocast on CPUs')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate linearly with the total batch size (auto_scale_lr)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from PATH, or from the latest checkpoint in the work dir if no PATH')
    add_allocator_argument(parser, default_on_cpu=True, help_text=(
        'keep freed memory for reuse (glibc mallopt, for this process and its data workers), so that each iteration '
        'stops paying page faults for the memory the previous one freed: Semantic FPN-EViT-M4 training iterations on '
        'the CPU 1.14-1.22x faster at the same peak memory. Default: on where the run is on the CPU and the C library '
        'is glibc'))
    add_common_arguments(parser)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        enable_auto_scale_lr(cfg)
    apply_resume(cfg, args.resume)
    if cfg.get('load_from'):
        cfg.load_from = local_checkpoint(cfg.load_from)  # mmengine's loader does not know hf-hub: names
    run_preflight(cfg, ('train_dataloader', 'val_dataloader'))
    prepare_cpu_distributed(cfg)
    # before the data workers fork: they inherit the setting; the device is the one the runner will take
    allocator = apply_allocator_argument(args, get_device())
    runner = Runner.from_cfg(cfg)
    runner.logger.info(f'memory allocator: {allocator}')
    model = runner_model(runner)
    check_backbone_neck(model)
    use_separable_roi_align_on_cpu(model, runner.logger)
    if cfg.get('load_from'):
        check_checkpoint_fits(model, cfg.get('load_from'))
    runner.train()
    return 0

"""``tools/test.py``: evaluation entry point for every task of evit_mm."""
from __future__ import annotations

import argparse

from mmengine.device import get_device
from mmengine.runner import Runner

from ..benchmark.allocator_option import add_allocator_argument, apply_allocator_argument
from ..checkpoint import local_checkpoint
from ..engine import prepare_cpu_distributed
from .config_options import add_common_arguments, apply_out, apply_show, apply_tta, load_config
from .cpu_roi_align import use_separable_roi_align_on_cpu
from .preflight import check_backbone_neck, check_checkpoint_fits, run_preflight, runner_model


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Evaluate an EfficientViT detector, segmentor or classifier')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint: a local file, a URL or hf-hub:ORG/NAME[@REVISION]')
    parser.add_argument('--out', help='write raw predictions (.pkl; a folder of maps for segmentation)')
    parser.add_argument('--show-dir', help='draw predictions into WORK_DIR/<timestamp>/SHOW_DIR')
    parser.add_argument('--show', action='store_true', help='show each prediction in a window (needs a display)')
    parser.add_argument('--wait-time', type=float, help='with --show: seconds each image is shown (default 2; 0: until '
                                                        'a key is pressed)')
    parser.add_argument('--tta', action='store_true',
                        help="test-time augmentation: the config's tta_model and tta_pipeline (detection without "
                             "them: the image and its horizontal flip merged by NMS, as mmdet's tool does; with "
                             "masks through evit_mm's InstanceSegTTAModel)")
    parser.add_argument('--deploy', action='store_true',
                        help='evaluate the deployed model (evit_mm.deploy.optimize_for_inference: Conv+BN folding, '
                             'fused kernels, Winograd 3x3 on CPU), e.g. to check that it scores the same')
    parser.add_argument('--bfloat16', action='store_true',
                        help='with --deploy: backbone, neck and dense heads on bfloat16 weights (float32 in and out), '
                             'to see what the faster bfloat16 deployment costs in accuracy')
    parser.add_argument('--cuda-graphs', action='store_true',
                        help='with --deploy: backbone, neck and dense heads replay CUDA graphs on the GPU, one per '
                             'input shape (evit_mm.deploy.use_cuda_graphs; same values, far fewer kernel launches)')
    add_allocator_argument(parser, default_on_cpu=True, help_text=(
        'keep freed memory for reuse (glibc mallopt, for this process and its data workers), so that predictions stop '
        'paying page faults for fresh memory: Semantic FPN-EViT-M4 predicts images of mixed sizes 1.7x faster on the '
        'CPU at the same peak memory. Default: on where the run is on the CPU and the C library is glibc'))
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    if args.wait_time is not None and not args.show:
        parser.error('--wait-time is how long --show shows each image; add --show')
    for flag, name in ((args.bfloat16, '--bfloat16'), (args.cuda_graphs, '--cuda-graphs')):
        if flag and not args.deploy:
            parser.error(f'{name} changes the deployed model; add --deploy')
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    checkpoint = local_checkpoint(args.checkpoint)  # a missing file is named before anything is read or built
    cfg = load_config(args)
    cfg.load_from = None  # loaded below, after checking that it fits
    if args.show_dir or args.show:
        apply_show(cfg, args.show_dir, args.show, 2.0 if args.wait_time is None else args.wait_time)
    if args.out:
        apply_out(cfg, args.out)
    run_preflight(cfg, ('test_dataloader',))
    tta_defaults = apply_tta(cfg) if args.tta else []  # after the checks, which read the model config unwrapped
    prepare_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    if tta_defaults:
        runner.logger.info(f'--tta: the config has no {" and no ".join(tta_defaults)}: these defaults used')
    model = runner_model(runner)
    check_backbone_neck(model)
    use_separable_roi_align_on_cpu(model, runner.logger)
    if hasattr(model, 'load_checkpoint'):
        # classifiers read official/timm/evit_mm checkpoints themselves (strict, heads converted)
        model.load_checkpoint(checkpoint)
    else:
        check_checkpoint_fits(model, checkpoint)
        runner.load_checkpoint(checkpoint)  # a hub name made a local file above: mmengine's loader does not know them
    if args.cuda_graphs and next(model.parameters()).device.type != 'cuda':
        raise SystemExit('error: --cuda-graphs needs a GPU (CUDA graphs replay on a GPU only); this run is on '
                         f'{next(model.parameters()).device}')
    if args.deploy:
        from ..deploy import optimize_for_inference
        runner.logger.info(str(optimize_for_inference(model, bfloat16=args.bfloat16, cuda_graphs=args.cuda_graphs)))
    # before the test loop forks its data workers, which inherit the setting
    runner.logger.info(f'memory allocator: {apply_allocator_argument(args, get_device())}')
    runner.test()
    return 0

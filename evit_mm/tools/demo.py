"""``make demo``: synthetic COCO data, RetinaNet-EfficientViT-M0 trained from scratch on the CPU, COCO AP."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..data.demo_coco import make_coco_demo
from . import train

DEMO_CONFIG = 'configs/demo/retinanet_evit_m0_coco_demo.py'
DEMO_DATA = 'data/coco_demo'


def read_scalars(work_dir: Path) -> list[dict]:
    """The newest run's ``vis_data/scalars.json`` lines (mmengine's LocalVisBackend)."""
    runs = sorted(work_dir.glob('*/vis_data/scalars.json'), key=lambda p: p.stat().st_mtime)
    if not runs:
        return []
    return [json.loads(line) for line in runs[-1].read_text().splitlines() if line.strip()]


def plot_loss(scalars: list[dict], path: Path) -> bool:
    points = [(s['iter'], s['loss']) for s in scalars if 'loss' in s and 'iter' in s]
    if not points:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*points))
    ax.set(xlabel='iteration', ylabel='training loss', yscale='log', title='RetinaNet-EfficientViT-M0, demo data')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description='Train and evaluate the demo detector on synthetic COCO data')
    parser.add_argument('--work-dir', default='work_dirs/demo')
    parser.add_argument('--data-root', default=DEMO_DATA)
    parser.add_argument('--epochs', type=int, default=None, help='override the demo config (default 12)')
    args = parser.parse_args(argv)
    make_coco_demo(args.data_root)
    options = [f'train_dataloader.dataset.data_root={args.data_root}/',
               f'val_dataloader.dataset.data_root={args.data_root}/',
               f'test_dataloader.dataset.data_root={args.data_root}/',
               f'val_evaluator.ann_file={args.data_root}/annotations/instances_val2017.json',
               f'test_evaluator.ann_file={args.data_root}/annotations/instances_val2017.json']
    if args.epochs:
        options += [f'train_cfg.max_epochs={args.epochs}', f'train_cfg.val_interval={args.epochs}',
                    f'param_scheduler.1.T_max={args.epochs}', f'param_scheduler.1.end={args.epochs}',
                    f'default_hooks.checkpoint.interval={args.epochs}']
    start = time.time()
    train.main([DEMO_CONFIG, '--work-dir', args.work_dir, '--cfg-options', *options])
    minutes = (time.time() - start) / 60
    work_dir = Path(args.work_dir)
    scalars = read_scalars(work_dir)
    metrics = [s for s in scalars if 'coco/bbox_mAP' in s]
    curve = work_dir / 'loss_curve.png'
    plotted = plot_loss(scalars, curve)
    print('\n=== evit_mm demo: RetinaNet + EfficientViT-M0, synthetic shapes (COCO format), CPU, from scratch ===')
    if metrics:
        m = metrics[-1]
        print('bbox AP {:.3f} | AP50 {:.3f} | AP75 {:.3f} | APs {:.3f} | APm {:.3f} | APl {:.3f}'.format(
            *(m[f'coco/bbox_mAP{s}'] for s in ('', '_50', '_75', '_s', '_m', '_l'))))
    print(f'training + evaluation: {minutes:.1f} min; logs and checkpoint in {work_dir}'
          + (f'; loss curve: {curve}' if plotted else ''))
    return 0

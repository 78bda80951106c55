"""End-to-end segmentation runs on tiny generated ADE20K-layout data: train, test with mIoU, bad input."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evit_mm.data.demo_ade20k import make_ade20k_demo
from evit_mm.tools import test as test_tool
from evit_mm.tools import train as train_tool
from evit_mm.tools.preflight import PreflightError
from tests.conftest import REPO_ROOT
from tests.helpers import logged_metrics

DEMO_CONFIG = str(REPO_ROOT / 'configs/demo/fpn_evit_m0_ade20k_demo.py')


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory) -> Path:
    return make_ade20k_demo(tmp_path_factory.mktemp('ade') / 'ADEChallengeData2016', num_train=8, num_val=3,
                            size=(97, 131))


def _options(root: Path, iters: int = 3, **extra: str) -> list[str]:
    opts = {
        'train_dataloader.dataset.data_root': str(root), 'val_dataloader.dataset.data_root': str(root),
        'test_dataloader.dataset.data_root': str(root), 'train_dataloader.num_workers': '0',
        'val_dataloader.num_workers': '0', 'test_dataloader.num_workers': '0',
        'train_dataloader.persistent_workers': 'False', 'val_dataloader.persistent_workers': 'False',
        'test_dataloader.persistent_workers': 'False', 'train_dataloader.batch_size': '2',
        'train_cfg.max_iters': str(iters), 'train_cfg.val_interval': str(iters),
        'default_hooks.checkpoint.interval': str(iters), 'param_scheduler.1.end': str(iters),
        'param_scheduler.0.end': '1', 'param_scheduler.1.begin': '1', **extra}
    return ['--cfg-options', *(f'{k}={v}' for k, v in opts.items())]


@pytest.mark.slow
def test_train_then_test_reports_miou(ade_root, tmp_path):
    work = tmp_path / 'work'
    assert train_tool.main([DEMO_CONFIG, '--work-dir', str(work), *_options(ade_root)]) == 0
    ckpt = work / 'iter_3.pth'
    assert ckpt.is_file()
    assert any(k.startswith('backbone.stages.') for k in torch.load(ckpt)['state_dict'])
    out_dir = tmp_path / 'preds'
    assert test_tool.main([DEMO_CONFIG, str(ckpt), '--work-dir', str(tmp_path / 'test'), '--out', str(out_dir),
                           *_options(ade_root)]) == 0
    metrics = logged_metrics(tmp_path / 'test', 'mIoU')
    for key in ('mIoU', 'mAcc', 'aAcc'):
        assert 0.0 <= metrics[key] <= 100.0
    assert len(list(out_dir.glob('*.png'))) == 3
    # test-time augmentation from mmseg's base configs (six scales, each flipped), scored by the same tool
    assert test_tool.main([DEMO_CONFIG, str(ckpt), '--work-dir', str(tmp_path / 'test_tta'), '--tta',
                           *_options(ade_root)]) == 0
    assert 0.0 <= logged_metrics(tmp_path / 'test_tta', 'mIoU')['mIoU'] <= 100.0
    assert "type='SegTTAModel'" in next((tmp_path / 'test_tta').glob('*/*.log')).read_text()


@pytest.mark.slow
def test_slide_inference_on_odd_sizes(ade_root, tmp_path, keep_freed_memory_calls):
    work = tmp_path / 'work'
    train_tool.main([DEMO_CONFIG, '--work-dir', str(work), *_options(ade_root, iters=2)])
    assert keep_freed_memory_calls == [1]  # a CPU run of tools/train.py keeps freed memory by default...
    log = next(work.glob('*/*.log')).read_text()
    assert 'memory allocator: glibc keeps freed memory (mmap threshold 1024 MiB' in log  # ...and says so
    assert 'the default for CPU runs, --no-keep-freed-memory' in log
    assert test_tool.main([
        DEMO_CONFIG, str(work / 'iter_2.pth'), '--work-dir', str(tmp_path / 'test'), '--no-keep-freed-memory',
        *_options(ade_root, **{'model.test_cfg.mode': 'slide', 'model.test_cfg.crop_size': '(96,96)',
                               'model.test_cfg.stride': '(64,64)'})]) == 0
    assert 0.0 <= logged_metrics(tmp_path / 'test', 'mIoU')['mIoU'] <= 100.0
    assert keep_freed_memory_calls == [1]  # tools/test.py --no-keep-freed-memory left the allocator alone
    log = next((tmp_path / 'test').glob('*/*.log')).read_text()
    assert 'memory allocator: default allocator settings\n' in log


def test_missing_dataset_stops_before_training(tmp_path):
    with pytest.raises(PreflightError, match=r"data_root: folder '.*missing' does not exist"):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                         f'train_dataloader.dataset.data_root={tmp_path}/missing'])


def test_wrong_num_classes_stops_before_training(ade_root, tmp_path):
    with pytest.raises(PreflightError, match=r'decode_head.num_classes is 150, but the dataset has 5 classes'):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path),
                         *_options(ade_root, **{'model.decode_head.num_classes': '150'})])


def test_unknown_arch_stops_before_training(ade_root, tmp_path):
    with pytest.raises(PreflightError, match=r"Unknown EfficientViT arch 'x1'"):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path),
                         *_options(ade_root, **{'model.backbone.arch': 'x1'})])

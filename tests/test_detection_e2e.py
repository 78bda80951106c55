"""End-to-end detection runs on tiny generated COCO data: train, test, resume, torchrun, bad input."""
from __future__ import annotations

import math
import os
import pickle
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from evit_mm.data.demo_coco import make_coco_demo
from evit_mm.tools import test as test_tool
from evit_mm.tools import train as train_tool
from evit_mm.tools.publish import publish_checkpoint
from evit_mm.tools.preflight import PreflightError
from tests.conftest import REPO_ROOT
from tests.helpers import hub_cache, logged_metrics

DEMO_CONFIG = str(REPO_ROOT / 'configs/demo/retinanet_evit_m0_coco_demo.py')
MASK_DEMO_CONFIG = str(REPO_ROOT / 'configs/demo/mask_rcnn_evit_m0_coco_demo.py')


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory) -> Path:
    return make_coco_demo(tmp_path_factory.mktemp('coco'), num_train=16, num_val=4, size=(128, 128))


def _options(root: Path, epochs: int = 1, **extra: str) -> list[str]:
    ann = f'{root}/annotations/instances_val2017.json'
    opts = {
        'train_dataloader.dataset.data_root': f'{root}/', 'val_dataloader.dataset.data_root': f'{root}/',
        'test_dataloader.dataset.data_root': f'{root}/', 'val_evaluator.ann_file': ann,
        'test_evaluator.ann_file': ann, 'train_dataloader.num_workers': '0', 'val_dataloader.num_workers': '0',
        'test_dataloader.num_workers': '0', 'train_dataloader.persistent_workers': 'False',
        'val_dataloader.persistent_workers': 'False', 'test_dataloader.persistent_workers': 'False',
        'train_cfg.max_epochs': str(epochs), 'train_cfg.val_interval': str(epochs),
        'default_hooks.checkpoint.interval': '1', 'default_hooks.checkpoint.max_keep_ckpts': '-1',
        'param_scheduler.1.T_max': str(epochs), 'param_scheduler.1.end': str(epochs),
        'randomness.seed': '0', 'model.test_cfg.score_thr': '0.0', **extra}
    return ['--cfg-options', *(f'{k}={v}' for k, v in opts.items())]


@pytest.mark.slow
def test_train_then_test_writes_checkpoint_metrics_and_predictions(coco_root, tmp_path, offline_hub):
    work = tmp_path / 'work'
    assert train_tool.main([DEMO_CONFIG, '--work-dir', str(work), *_options(coco_root)]) == 0
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()
    state = torch.load(ckpt)  # safe loading by default
    assert any(k.startswith('backbone.stages.') for k in state['state_dict'])
    test_dir = tmp_path / 'test'
    out = tmp_path / 'preds.pkl'
    assert test_tool.main([DEMO_CONFIG, str(ckpt), '--work-dir', str(test_dir), '--out', str(out),
                           '--show-dir', 'vis', *_options(coco_root)]) == 0
    drawn = sorted(path.stem for path in test_dir.glob('*/vis/*.png'))  # ground truth and prediction side by side
    assert drawn == sorted(path.stem for path in (coco_root / 'val2017').iterdir())
    metrics = logged_metrics(test_dir, 'coco/bbox_mAP')
    for name in ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l'):
        assert 0.0 <= metrics[f'coco/bbox_{name}'] <= 1.0 or metrics[f'coco/bbox_{name}'] == -1.0
    assert out.is_file() and out.stat().st_size > 0
    # the published model (weights and classes, no training state) is smaller and scores the same
    published, _ = publish_checkpoint(ckpt, tmp_path / 'published' / 'retinanet_evit_m0_demo.pth')
    assert published.stat().st_size < 0.4 * ckpt.stat().st_size  # without AdamW's two moments (15.4 of 45.9 MB)
    assert torch.load(published, weights_only=True)['meta']['dataset_meta']['classes'][0] == 'circle'
    assert test_tool.main([DEMO_CONFIG, str(published), '--work-dir', str(tmp_path / 'test_published'),
                           *_options(coco_root)]) == 0
    published_metrics = logged_metrics(tmp_path / 'test_published', 'coco/bbox_mAP')
    assert {k: v for k, v in published_metrics.items() if k.startswith('coco/')} == {
        k: v for k, v in metrics.items() if k.startswith('coco/')}
    deployed_dir = tmp_path / 'test_deployed'
    hub_cache(offline_hub, 'me/retinanet-evit-demo', {'pytorch_model.bin': lambda p: shutil.copy(ckpt, p)})
    assert test_tool.main([DEMO_CONFIG, 'hf-hub:me/retinanet-evit-demo', '--work-dir', str(deployed_dir),
                           '--deploy', *_options(coco_root)]) == 0  # the same checkpoint through a hub name
    deployed = logged_metrics(deployed_dir, 'coco/bbox_mAP')
    for name, value in metrics.items():  # the deployed model scores the same
        if name.startswith('coco/bbox_'):
            assert deployed[name] == pytest.approx(value, abs=1e-3), name
    # on bfloat16 weights: the same detections to within bfloat16's rounding, scored by the same tool
    bf16_out = tmp_path / 'preds_bf16.pkl'
    assert test_tool.main([DEMO_CONFIG, str(ckpt), '--work-dir', str(tmp_path / 'test_bf16'), '--deploy',
                           '--bfloat16', '--out', str(bf16_out), *_options(coco_root)]) == 0
    bf16_metrics = logged_metrics(tmp_path / 'test_bf16', 'coco/bbox_mAP')
    assert bf16_metrics['coco/bbox_mAP'] == pytest.approx(metrics['coco/bbox_mAP'], abs=0.05)
    with open(out, 'rb') as f, open(bf16_out, 'rb') as g:
        for p, b in zip(pickle.load(f), pickle.load(g), strict=True):
            top_p = p['pred_instances']['scores'].sort(descending=True).values[:20]
            top_b = b['pred_instances']['scores'].sort(descending=True).values[:20]
            assert len(top_p) == len(top_b) > 0 and b['pred_instances']['bboxes'].dtype == torch.float32
            torch.testing.assert_close(top_b, top_p, rtol=0, atol=0.01)
    # test-time augmentation (mmdet's defaults: the image and its flip, merged by NMS), deployed too
    tta_out = tmp_path / 'preds_tta.pkl'
    assert test_tool.main([DEMO_CONFIG, str(ckpt), '--work-dir', str(tmp_path / 'test_tta'), '--tta', '--deploy',
                           '--out', str(tta_out), *_options(coco_root)]) == 0
    assert 0.0 <= logged_metrics(tmp_path / 'test_tta', 'coco/bbox_mAP')['coco/bbox_mAP'] <= 1.0
    assert "--tta: the config has no tta_model (DetTTAModel, NMS at IoU 0.5) and no tta_pipeline" in next(
        (tmp_path / 'test_tta').glob('*/*.log')).read_text()
    with open(out, 'rb') as f, open(tta_out, 'rb') as g:
        plain, augmented = pickle.load(f), pickle.load(g)
    assert [p['img_id'] for p in plain] == [a['img_id'] for a in augmented]
    assert all(a['pred_instances']['bboxes'].shape[0] <= 100 for a in augmented)  # the TTA model's max_per_img
    assert any(p['pred_instances']['bboxes'].shape != a['pred_instances']['bboxes'].shape
               or not torch.equal(p['pred_instances']['bboxes'], a['pred_instances']['bboxes'])
               for p, a in zip(plain, augmented))  # the flipped image's detections were merged in
    graphs = [DEMO_CONFIG, str(ckpt), '--work-dir', str(tmp_path / 'test_graphs'), '--deploy', '--cuda-graphs',
              *_options(coco_root)]
    if not torch.cuda.is_available():  # CUDA graphs on a CPU run: refused, not ignored
        with pytest.raises(SystemExit, match='--cuda-graphs needs a GPU'):
            test_tool.main(graphs)
    else:  # replaying CUDA graphs scores what the deployed model scores
        assert test_tool.main(graphs) == 0
        graphed = logged_metrics(tmp_path / 'test_graphs', 'coco/bbox_mAP')
        assert graphed['coco/bbox_mAP'] == pytest.approx(deployed['coco/bbox_mAP'], abs=1e-3)


@pytest.mark.slow
def test_mask_rcnn_trains_evaluates_masks_and_deploys(coco_root, tmp_path):
    """Mask R-CNN end to end: masks loaded and learned, box and mask AP, and the deployed model (Winograd, folded
    convs) predicting the same instances as the model it came from; on the CPU both tools run RoIAlign as matrix
    products."""
    options = _options(coco_root, **{'model.test_cfg.rcnn.score_thr': '0.0'})
    work = tmp_path / 'work'
    assert train_tool.main([MASK_DEMO_CONFIG, '--work-dir', str(work), *options]) == 0
    train_log = next(work.glob('*/*.log')).read_text()
    assert '8 RoIAlign layers run as matrix products on the CPU' in train_log
    results = {}
    for name, extra in (('plain', []), ('deployed', ['--deploy'])):
        out = tmp_path / f'{name}.pkl'
        assert test_tool.main([MASK_DEMO_CONFIG, str(work / 'epoch_1.pth'), '--work-dir', str(tmp_path / name),
                               '--out', str(out), *extra, *options]) == 0
        metrics = logged_metrics(tmp_path / name, 'coco/segm_mAP')
        assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= metrics.keys()
        with open(out, 'rb') as f:
            results[name] = (metrics, pickle.load(f))
    (metrics, plain), (deployed_metrics, deployed) = results['plain'], results['deployed']
    for name, value in metrics.items():
        if name.startswith('coco/'):
            assert deployed_metrics[name] == pytest.approx(value, abs=1e-3), name
    assert len(plain) == len(deployed) == 4
    for p, d in zip(plain, deployed):
        p, d = p['pred_instances'], d['pred_instances']
        assert len(p['scores']) == len(d['scores']) > 0 and len(d['masks']) == len(d['scores'])
        torch.testing.assert_close(d['scores'].sort().values, p['scores'].sort().values, rtol=0, atol=1e-4)
    # test-time augmentation with masks: evit_mm's InstanceSegTTAModel (mmdet's DetTTAModel asserts on masks)
    tta_out = tmp_path / 'tta.pkl'
    assert test_tool.main([MASK_DEMO_CONFIG, str(work / 'epoch_1.pth'), '--work-dir', str(tmp_path / 'tta'), '--tta',
                           '--deploy', '--out', str(tta_out), *options]) == 0
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= logged_metrics(tmp_path / 'tta', 'coco/segm_mAP').keys()
    assert ('--tta: the config has no tta_model (InstanceSegTTAModel, NMS at IoU 0.5) and no tta_pipeline (the test '
            'pipeline on the image and its horizontal flip): these defaults used') in next(
        (tmp_path / 'tta').glob('*/*.log')).read_text()
    with open(tta_out, 'rb') as f:
        tta = pickle.load(f)
    assert [t['img_id'] for t in tta] == [p['img_id'] for p in plain]
    for t, p in zip(tta, plain):
        t = t['pred_instances']
        assert 0 < len(t['scores']) == len(t['masks']) <= 100
        assert t['scores'].max() >= p['pred_instances']['scores'].max() - 1e-4  # the plain view's best is a candidate


@pytest.mark.slow
@pytest.mark.parametrize('config', [DEMO_CONFIG, MASK_DEMO_CONFIG], ids=['RetinaNet', 'Mask R-CNN'])
def test_amp_trains_on_the_cpu_in_bfloat16(config, coco_root, tmp_path):
    """--amp on a CPU machine: bfloat16 autocast (mmengine's AmpOptimWrapper refuses CPUs), float32 weights saved.
    Mask R-CNN too: mmcv's CPU NMS and RoIAlign take float32 only and raised on autocast's bfloat16 scores and maps
    (``evit_mm.compat.mmcv_ops``)."""
    work = tmp_path / 'work'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the warning of CPUs without native bfloat16 (tested in test_cpu_amp)
        assert train_tool.main([config, '--work-dir', str(work), '--amp',
                                *_options(coco_root, **{'default_hooks.logger.interval': '1'})]) == 0
    assert "type='CPUBfloat16OptimWrapper'" in (work / Path(config).name).read_text()
    # the text log: mmengine's visualizer is one per process, so in a test session its scalars.json may sit elsewhere
    log = next(work.glob('*/*.log')).read_text()
    losses = [float(v) for v in re.findall(r'Epoch\(train\).* loss: (\S+)', log)]
    assert losses and all(math.isfinite(loss) for loss in losses)
    state = torch.load(work / 'epoch_1.pth')['state_dict']
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_resume_continues_from_saved_iteration(coco_root, tmp_path):
    work = tmp_path / 'work'
    train_tool.main([DEMO_CONFIG, '--work-dir', str(work), *_options(coco_root, epochs=1)])
    first = torch.load(work / 'epoch_1.pth')
    assert first['meta']['iter'] == 2  # 16 images, batch 8
    train_tool.main([DEMO_CONFIG, '--work-dir', str(work), '--resume', *_options(coco_root, epochs=2)])
    second = torch.load(work / 'epoch_2.pth')
    assert second['meta']['epoch'] == 2 and second['meta']['iter'] == 4
    logs = sorted(work.glob('*/*.log'), key=os.path.getmtime)[-1].read_text()
    assert 'resumed epoch: 1, iter: 2' in logs
    # The optimizer state was carried over: AdamW's step count kept growing instead of restarting.
    steps = [v['step'] for v in second['optimizer']['state'].values()]
    assert steps and all(float(s) == 4 for s in steps)


@pytest.mark.slow
def test_torchrun_two_processes_keep_identical_weights(coco_root, tmp_path):
    work = tmp_path / 'work'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',  # a free port
           str(REPO_ROOT / 'tests/dist_train_check.py'), DEMO_CONFIG, '--work-dir', str(work),
           '--launcher', 'pytorch', *_options(coco_root)]
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0, rank1 = (torch.load(work / f'rank{r}_weights.pth') for r in (0, 1))
    assert rank0.keys() == rank1.keys() and len(rank0) > 100
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
    assert torch.load(work / 'epoch_1.pth')['meta']['iter'] == 1  # 16 images / (2 ranks x 8)


def test_missing_dataset_stops_before_training(tmp_path):
    with pytest.raises(PreflightError, match=r"data_root: folder '.*nowhere/' does not exist .*standard COCO layout"):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                         f'train_dataloader.dataset.data_root={tmp_path}/nowhere/'])


def test_wrong_num_classes_stops_before_training(coco_root, tmp_path):
    with pytest.raises(PreflightError, match=r'model.bbox_head.num_classes is 80, but the dataset has 4 classes'):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path),
                         *_options(coco_root, **{'model.bbox_head.num_classes': '80'})])
    # ...and testing, with the detector wrapped for test-time augmentation too (the checks read it unwrapped)
    (tmp_path / 'never_read.pth').write_bytes(b'')  # exists: the tool names a missing file first
    with pytest.raises(PreflightError, match=r'model.bbox_head.num_classes is 80, but the dataset has 4 classes'):
        test_tool.main([DEMO_CONFIG, str(tmp_path / 'never_read.pth'), '--work-dir', str(tmp_path), '--tta',
                        *_options(coco_root, **{'model.bbox_head.num_classes': '80'})])


def test_a_missing_checkpoint_is_named_before_anything_else(tmp_path):
    absent = tmp_path / 'work_dirs' / 'epoch_12.pth'
    options = ['--work-dir', str(tmp_path), '--cfg-options', f'test_dataloader.dataset.data_root={tmp_path}/nowhere/']
    for tool, argv in ((test_tool, [DEMO_CONFIG, str(absent), *options]),
                       (train_tool, [DEMO_CONFIG, '--resume', str(absent), *options])):  # the dataset is missing too
        with pytest.raises(FileNotFoundError, match=f"checkpoint not found: '{absent}'"):
            tool.main(argv)


def test_unknown_arch_stops_before_training(coco_root, tmp_path):
    with pytest.raises(PreflightError, match=r"Unknown EfficientViT arch 'm7'; valid choices"):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path),
                         *_options(coco_root, **{'model.backbone.arch': 'm7'})])


def test_arch_without_matching_neck_stops_before_training(coco_root, tmp_path):
    with pytest.raises(PreflightError, match=r'neck expects in_channels=\[64, 128, 192\] but the backbone'):
        train_tool.main([DEMO_CONFIG, '--work-dir', str(tmp_path),
                         *_options(coco_root, **{'model.backbone.arch': 'm4'})])


@pytest.mark.slow
def test_checkpoint_of_another_arch_is_refused_by_test_tool(coco_root, tmp_path):
    work = tmp_path / 'work'
    train_tool.main([DEMO_CONFIG, '--work-dir', str(work), *_options(coco_root)])
    with pytest.raises(PreflightError, match=r"does not fit this model.*another arch or task.*Its backbone weights "
                                             r"are EfficientViT-M0's: model.backbone.arch='m0'\?"):
        test_tool.main([DEMO_CONFIG, str(work / 'epoch_1.pth'), '--work-dir', str(tmp_path / 't'),
                        *_options(coco_root, **{'model.backbone.arch': 'm1',
                                                'model.neck.in_channels': '[128,144,192]'})])


def test_train_script_reports_bad_input_without_traceback(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / 'tools/train.py'), DEMO_CONFIG, '--work-dir', str(tmp_path),
                           '--cfg-options', f'train_dataloader.dataset.data_root={tmp_path}/absent/'],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.startswith('error: dataset not found') and 'Traceback' not in proc.stderr

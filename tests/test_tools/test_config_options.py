"""The command-line options that tools/train.py and tools/test.py apply to a config, on the demo configs."""
from __future__ import annotations

import argparse

import pytest
from mmengine.config import Config

from evit_mm.tools.config_options import (add_common_arguments, apply_out, apply_resume, apply_show_dir,
                                          enable_auto_scale_lr, load_config)
from tests.conftest import REPO_ROOT

DETECTION = str(REPO_ROOT / 'configs/demo/retinanet_evit_m0_coco_demo.py')
SEGMENTATION = str(REPO_ROOT / 'configs/demo/fpn_evit_m0_ade20k_demo.py')
CLASSIFICATION = str(REPO_ROOT / 'configs/demo/evit_m0_in1k_demo.py')


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument('config')
    add_common_arguments(parser)
    return parser.parse_args(argv)


def test_load_config_applies_options_launcher_and_default_work_dir():
    cfg = load_config(_args([DETECTION, '--cfg-options', 'model.backbone.arch=m1', 'train_dataloader.batch_size=3',
                             '--launcher', 'pytorch']))
    assert (cfg.model.backbone.arch, cfg.train_dataloader.batch_size, cfg.launcher) == ('m1', 3, 'pytorch')
    assert cfg.work_dir == './work_dirs/retinanet_evit_m0_coco_demo'
    assert load_config(_args([DETECTION, '--work-dir', 'elsewhere'])).work_dir == 'elsewhere'


def test_load_config_names_a_missing_file():
    with pytest.raises(FileNotFoundError, match="config file not found: 'configs/retinanet_evit_m9.py'"):
        load_config(_args(['configs/retinanet_evit_m9.py']))  # relative to the working directory, as typed


def test_auto_scale_lr_needs_a_base_batch_size():
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/retinanet_evit_m4.py'))
    assert not cfg.auto_scale_lr.enable
    enable_auto_scale_lr(cfg)
    assert cfg.auto_scale_lr == dict(enable=True, base_batch_size=16)
    with pytest.raises(ValueError, match=r'--auto-scale-lr needs auto_scale_lr=dict\(base_batch_size=...\)'):
        enable_auto_scale_lr(Config(dict(model=dict())))


@pytest.mark.parametrize('resume, expected', [
    (None, (False, None)), ('auto', (True, None)), ('work_dirs/x/epoch_3.pth', (True, 'work_dirs/x/epoch_3.pth'))])
def test_resume_latest_or_a_given_file(resume, expected):
    cfg = Config(dict(resume=False, load_from=None))
    apply_resume(cfg, resume)
    assert (cfg.resume, cfg.load_from) == expected


def test_show_dir_turns_drawing_on_or_names_the_missing_hook():
    cfg = Config.fromfile(SEGMENTATION)
    apply_show_dir(cfg, 'vis', wait_time=0.5)
    hook = cfg.default_hooks.visualization
    assert (hook.type, hook.draw, hook.test_out_dir, hook.wait_time) == ('SegVisualizationHook', True, 'vis', 0.5)
    with pytest.raises(ValueError, match=r'--show-dir needs a visualization hook in default_hooks \(task: evit_mm\)'):
        apply_show_dir(Config.fromfile(CLASSIFICATION), 'vis')


def test_out_adds_the_task_dumper():
    det = Config.fromfile(DETECTION)
    apply_out(det, 'preds.pkl')
    assert [e['type'] for e in det.test_evaluator] == ['CocoMetric', 'DumpDetResults']
    assert det.test_evaluator[1].out_file_path == 'preds.pkl'
    seg = Config.fromfile(SEGMENTATION)
    apply_out(seg, 'maps')
    assert (seg.test_evaluator.output_dir, seg.test_evaluator.keep_results) == ('maps', True)
    cls = Config.fromfile(CLASSIFICATION)
    apply_out(cls, 'preds.pickle')
    assert [e['type'] for e in cls.test_evaluator] == ['TopKAccuracy', 'DumpResults']
    with pytest.raises(ValueError, match="--out must be a .pkl file for mmdet configs, got 'preds.json'"):
        apply_out(Config.fromfile(DETECTION), 'preds.json')

"""The command-line options that tools/train.py and tools/test.py apply to a config, on the demo configs."""
from __future__ import annotations

import argparse

import pytest
from mmdet.registry import MODELS
from mmengine.config import Config

from evit_mm.tools.config_options import (ConfigOptionError, add_common_arguments, apply_out, apply_resume,
                                          apply_show, apply_tta, enable_auto_scale_lr, load_config)
from tests.conftest import REPO_ROOT

DETECTION = str(REPO_ROOT / 'configs/demo/retinanet_evit_m0_coco_demo.py')
SEGMENTATION = str(REPO_ROOT / 'configs/demo/fpn_evit_m0_ade20k_demo.py')
CLASSIFICATION = str(REPO_ROOT / 'configs/demo/evit_m0_in1k_demo.py')
MASK_RCNN = str(REPO_ROOT / 'configs/demo/mask_rcnn_evit_m0_coco_demo.py')


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


def test_show_dir_and_show_turn_drawing_on_or_name_the_missing_hook():
    cfg = Config.fromfile(SEGMENTATION)
    apply_show(cfg, 'vis')
    hook = cfg.default_hooks.visualization
    assert (hook.type, hook.draw, hook.test_out_dir, hook.get('show', False)) == ('SegVisualizationHook', True, 'vis',
                                                                                   False)
    cfg = Config.fromfile(DETECTION)
    apply_show(cfg, show=True, wait_time=0.5)
    hook = cfg.default_hooks.visualization
    assert (hook.type, hook.draw, hook.show, hook.wait_time) == ('DetVisualizationHook', True, True, 0.5)
    assert 'test_out_dir' not in hook
    for show_dir, show, option in (('vis', False, '--show-dir'), (None, True, '--show')):
        message = f'{option} needs a visualization hook in default_hooks \\(task: evit_mm\\)'
        with pytest.raises(ValueError, match=message):
            apply_show(Config.fromfile(CLASSIFICATION), show_dir, show)


@pytest.mark.parametrize('argv, wait_time', [(['--show'], 2.0), (['--show', '--wait-time', '0'], 0.0),
                                             (['--show-dir', 'vis'], None)])
def test_test_tool_shows_for_the_wait_time_asked(argv, wait_time, monkeypatch):
    """``--show`` as mmdet's and mmseg's test tools have it (2 s per image unless --wait-time says otherwise)."""
    from evit_mm.tools import test as test_tool
    calls = []
    monkeypatch.setattr(test_tool, 'apply_show', lambda cfg, show_dir, show, wait: calls.append((show_dir, show, wait)))
    monkeypatch.setattr(test_tool, 'run_preflight', lambda *args: (_ for _ in ()).throw(SystemExit('stop here')))
    with pytest.raises(SystemExit, match='stop here'):
        test_tool.main([DETECTION, __file__, *argv])
    show_dir = 'vis' if '--show-dir' in argv else None
    assert calls == [(show_dir, '--show' in argv, 2.0 if wait_time is None else wait_time)]


def test_wait_time_without_show_is_a_usage_error(capsys):
    """``--wait-time`` alone used to be accepted and do nothing (the hook waits only where it shows)."""
    from evit_mm.tools import test as test_tool
    with pytest.raises(SystemExit) as exit_info:
        test_tool.parse_args([DETECTION, 'ckpt.pth', '--show-dir', 'vis', '--wait-time', '1'])
    assert exit_info.value.code == 2
    assert '--wait-time is how long --show shows each image; add --show' in capsys.readouterr().err


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
    seg = Config.fromfile(SEGMENTATION)  # several evaluators: the ones that write maps get the folder
    seg.test_evaluator = [dict(type='IoUMetric', iou_metrics=['mIoU']), dict(type='DumpResults', out_file_path='x')]
    apply_out(seg, 'maps')
    assert seg.test_evaluator[0].output_dir == 'maps' and 'output_dir' not in seg.test_evaluator[1]
    seg.test_evaluator = [dict(type='DumpResults', out_file_path='x')]
    with pytest.raises(ConfigOptionError, match=r"--out for segmentation needs a test evaluator that writes "
                                                r"prediction maps \(IoUMetric, .*this config has \['DumpResults'\]"):
        apply_out(seg, 'maps')


def test_tta_wraps_the_model_and_reads_the_tta_pipeline():
    det = Config.fromfile(DETECTION)
    model, test_pipeline = det.model.to_dict(), det.test_dataloader.dataset.pipeline
    assert apply_tta(det) == ['tta_model (DetTTAModel, NMS at IoU 0.5)',
                              'tta_pipeline (the test pipeline on the image and its horizontal flip)']
    assert det.model.type == 'DetTTAModel' and det.model.module.to_dict() == model
    pipeline = det.test_dataloader.dataset.pipeline
    assert pipeline[:-1] == test_pipeline[:-1] and pipeline[-1].type == 'TestTimeAug'
    assert [t.prob for t in pipeline[-1].transforms[0]] == [1.0, 0.0]  # the image flipped and as it is
    own = Config.fromfile(DETECTION)  # a config's own TTA is kept
    own.tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.6), max_per_img=5))
    own.tta_pipeline = [dict(type='LoadImageFromFile'), dict(type='TestTimeAug', transforms=[])]
    assert apply_tta(own) == []
    assert own.model.tta_cfg.max_per_img == 5 and own.test_dataloader.dataset.pipeline == own.tta_pipeline
    mask_rcnn = Config.fromfile(MASK_RCNN)  # masks: merged by evit_mm's TTA model, mmdet's merges boxes only
    assert apply_tta(mask_rcnn)[0] == 'tta_model (InstanceSegTTAModel, NMS at IoU 0.5)'
    assert mask_rcnn.model.type == 'InstanceSegTTAModel' and mask_rcnn.model.module.roi_head.mask_head
    assert MODELS.build(mask_rcnn.model).tta_cfg.nms.iou_threshold == 0.5
    seg = Config.fromfile(SEGMENTATION)  # mmseg's base configs define both
    model = seg.model.to_dict()
    assert apply_tta(seg) == []
    assert seg.model.type == 'SegTTAModel' and seg.model.module.to_dict() == model
    assert seg.test_dataloader.dataset.pipeline[1].type == 'TestTimeAug'


def test_tta_names_what_is_missing():
    with pytest.raises(ConfigOptionError, match=r'--tta is for detection \(mmdet\) and segmentation \(mmseg\) '
                                                r"configs; this config's default_scope is 'evit_mm'"):
        apply_tta(Config.fromfile(CLASSIFICATION))
    mask_rcnn = Config.fromfile(MASK_RCNN)
    mask_rcnn.tta_model = dict(type='DetTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5)))
    with pytest.raises(ConfigOptionError, match="--tta: the config's tta_model is mmdet's DetTTAModel, which merges "
                                                r"boxes only, and this model predicts masks .*InstanceSegTTAModel"):
        apply_tta(mask_rcnn)
    seg = Config.fromfile(SEGMENTATION)
    seg._cfg_dict.pop('tta_pipeline')  # a config without it (mmengine's Config has no item deletion)
    with pytest.raises(ConfigOptionError, match='--tta needs tta_pipeline in the config'):
        apply_tta(seg)


def test_the_tools_print_a_bad_option_as_one_line(tmp_path):
    from evit_mm.tools import test as test_tool
    from evit_mm.tools.entry import run
    from evit_mm.data.demo_imagenet import make_imagenet_demo
    root = make_imagenet_demo(tmp_path / 'imagenet', train_per_class=1, val_per_class=1, size=32)
    (tmp_path / 'never_read.pth').write_bytes(b'')  # exists: a missing checkpoint would be named first
    error = run(test_tool.main, [CLASSIFICATION, str(tmp_path / 'never_read.pth'), '--tta', '--cfg-options',
                                 f'test_dataloader.dataset.data_root={root / "val"}'])
    assert error == ("error: --tta is for detection (mmdet) and segmentation (mmseg) configs; this config's "
                     "default_scope is 'evit_mm'")

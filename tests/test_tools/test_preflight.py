"""The checks tools/train.py and tools/test.py run on a config before anything is built (the end-to-end runs also
see them at work: tests/test_*_e2e.py, tests/test_classification.py)."""
from __future__ import annotations

import pytest
from mmengine.config import Config

from evit_mm.data.demo_imagenet import make_imagenet_demo
from evit_mm.tools.preflight import (PreflightError, check_backbone_arguments, check_mixup_batches, check_num_classes,
                                     num_classes_of_model)
from tests.conftest import REPO_ROOT


def test_every_num_classes_of_a_detector_is_found_and_checked():
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/demo/mask_rcnn_evit_m0_coco_demo.py'))
    assert num_classes_of_model(cfg.model) == [('model.roi_head.bbox_head.num_classes', 4),
                                               ('model.roi_head.mask_head.num_classes', 4)]
    check_num_classes(cfg)
    cfg.merge_from_dict({'model.roi_head.mask_head.num_classes': 80})
    with pytest.raises(PreflightError, match=r'model.roi_head.mask_head.num_classes is 80, but the dataset has 4 '
                                             r"classes \['circle', 'square', 'triangle', 'star'\]"):
        check_num_classes(cfg)


def test_the_classifiers_mixup_classes_are_checked_against_the_class_folders(tmp_path):
    root = make_imagenet_demo(tmp_path / 'imagenet', train_per_class=1, val_per_class=1, size=32)
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/demo/evit_m0_in1k_demo.py'))
    cfg.train_dataloader.dataset.data_root = str(root / 'train')
    assert num_classes_of_model(cfg.model) == [('model.num_classes', 4), ('model.data_preprocessor.num_classes', 4)]
    check_num_classes(cfg)
    cfg.model.data_preprocessor.num_classes = 1000  # --cfg-options model.num_classes=... alone would leave this
    with pytest.raises(PreflightError, match='model.data_preprocessor.num_classes is 1000, but the dataset has 4'):
        check_num_classes(cfg)


@pytest.mark.parametrize('arguments, message', [
    (dict(arch='m9'), "model backbone: Unknown EfficientViT arch 'm9'"),
    (dict(window_size=7.5), 'model backbone: window_size must be a positive int or 3 positive ints'),
    (dict(out_indices=(3,)), r'model backbone: out_indices must be non-empty ints in \[-3, 2\]'),
    (dict(frozen_stages=4), r'model backbone: frozen_stages must be an int in \[-1, 3\]'),
    (dict(archh='m0'), "model backbone: .*unexpected keyword argument 'archh'"),
    (dict(init_cfg=dict(type='Pretrained', chekpoint='m0.pth')),
     r"model backbone: init_cfg=dict\(type='Pretrained', ...\) takes checkpoint \(required\)"),
])
def test_backbone_arguments_are_checked_before_the_run(arguments, message):
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/demo/retinanet_evit_m0_coco_demo.py'))
    check_backbone_arguments(cfg)  # the config as shipped
    cfg.model.backbone.update(arguments)
    with pytest.raises(PreflightError, match=message):
        check_backbone_arguments(cfg)


def test_mixup_needs_even_batches():
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/evit_m4_in1k.py'))
    check_mixup_batches(cfg)  # 256 per GPU, drop_last=True
    cfg.train_dataloader.batch_size = 7
    with pytest.raises(PreflightError, match='needs an even batch size, and train_dataloader.batch_size is 7'):
        check_mixup_batches(cfg)
    cfg.train_dataloader.batch_size, cfg.train_dataloader.drop_last = 8, False
    with pytest.raises(PreflightError, match='without train_dataloader.drop_last=True the last batch'):
        check_mixup_batches(cfg)
    cfg.model.data_preprocessor.mixup = None  # no mixup: any batch
    check_mixup_batches(cfg)

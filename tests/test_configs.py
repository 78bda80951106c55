"""Every config in configs/ builds, runs one training step and one prediction at a small image size."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from tests.conftest import REPO_ROOT

CONFIGS = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / 'configs').rglob('*.py')
                 if p.parent.name != 'baselines')  # baselines: mmdet/mmseg configs for benchmarks


def _build(cfg: Config):
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    elif cfg.default_scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmengine.registry import MODELS
    cfg.model.backbone.init_cfg = None  # never reach the network in tests
    cfg.model.init_cfg = None
    return MODELS.build(cfg.model)


def _train_step_then_predict(model, packed: dict) -> list:
    """A finite loss whose gradient reaches the backbone's first conv, then the predictions in eval mode."""
    model.train()
    losses = model(**model.data_preprocessor(packed, True), mode='loss')
    parsed, _ = model.parse_losses(losses)
    assert torch.isfinite(parsed)
    parsed.backward()
    assert model.backbone.patch_embed.conv1.conv.weight.grad is not None
    model.eval()
    with torch.no_grad():
        return model(**model.data_preprocessor(packed, False), mode='predict')


def _det_step(model, num_classes: int, with_mask: bool) -> None:
    from mmdet.testing import demo_mm_inputs
    packed = demo_mm_inputs(2, [(3, 97, 131), (3, 128, 96)], num_classes=num_classes, with_mask=with_mask)
    results = _train_step_then_predict(model, packed)
    assert len(results) == 2
    assert results[0].pred_instances.bboxes.shape[1] == 4
    if with_mask:
        assert results[0].pred_instances.masks.shape[1:] == (97, 131)


def _seg_step(model, num_classes: int) -> None:
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    model.data_preprocessor.size = (96, 128)  # the crop size; tests stay small
    inputs, samples = [], []
    for _ in range(2):
        h, w = 93, 121  # odd, smaller than the crop: padded by the preprocessor
        inputs.append(torch.randint(0, 255, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, num_classes, (1, h, w))))
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w)))
        samples.append(sample)
    preds = _train_step_then_predict(model, dict(inputs=inputs, data_samples=samples))
    assert preds[0].pred_sem_seg.data.shape == (1, 93, 121)
    assert preds[0].seg_logits.data.shape[0] == num_classes


def _cls_step(model, num_classes: int) -> None:
    data = dict(inputs=[torch.randn(3, 64, 80) for _ in range(4)], data_samples=[0, 1, 2, num_classes - 1])
    model.train()
    losses = model(**model.data_preprocessor(data, True), mode='loss')
    parsed, _ = model.parse_losses(losses)
    assert torch.isfinite(parsed)
    parsed.backward()
    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(data, False), mode='predict')
    assert len(preds) == 4 and preds[0]['pred_score'].shape == (num_classes,)
    torch.testing.assert_close(preds[0]['pred_score'].sum(), torch.tensor(1.0))


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds_trains_one_step_and_predicts(config):
    cfg = Config.fromfile(str(REPO_ROOT / config))
    assert 'evit_mm' in cfg.custom_imports['imports']
    model = _build(cfg)
    backbone = model.backbone
    assert type(backbone).__name__ == 'EfficientViT'
    if getattr(model, 'neck', None) is not None:
        assert list(model.neck.in_channels) == backbone.out_channels
    if cfg.default_scope == 'mmdet':
        with_mask = 'mask_head' in cfg.model.get('roi_head', {})
        head = cfg.model.get('bbox_head') or cfg.model.roi_head.bbox_head
        _det_step(model, head.num_classes, with_mask)
    elif cfg.default_scope == 'mmseg':
        _seg_step(model, cfg.model.decode_head.num_classes)
    elif cfg.default_scope == 'evit_mm':
        _cls_step(model, cfg.model.num_classes)
    else:
        pytest.fail(f'no step test for scope {cfg.default_scope!r} ({config})')


def test_official_recipe_in_retinanet_m4():
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/retinanet_evit_m4.py'))
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'
    assert cfg.optim_wrapper.optimizer.lr == 1e-4 and cfg.optim_wrapper.optimizer.weight_decay == 0.05
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['attention_biases']['decay_mult'] == 0.0
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.param_scheduler[1].milestones == [8, 11] and cfg.param_scheduler[0].end == 500
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.model.backbone.init_cfg.checkpoint.endswith('efficientvit_m4.pth')
    assert cfg.train_pipeline[2].scale == (1333, 800)


@pytest.mark.parametrize('arch', ['m0', 'm1', 'm2', 'm3', 'm5'])
def test_thin_retinanet_configs_only_change_arch(arch):
    base = Config.fromfile(str(REPO_ROOT / 'configs/retinanet_evit_m4.py'))
    thin = Config.fromfile(str(REPO_ROOT / f'configs/retinanet_evit_{arch}.py'))
    assert thin.model.backbone.arch == arch
    assert thin.model.backbone.init_cfg.checkpoint.endswith(f'efficientvit_{arch}.pth')
    assert thin.optim_wrapper == base.optim_wrapper and thin.param_scheduler == base.param_scheduler
    assert Path(REPO_ROOT / f'configs/retinanet_evit_{arch}.py').read_text().count('\n') < 15


@pytest.mark.parametrize('config', sorted(p.name for p in (REPO_ROOT / 'configs/demo').glob('*.py')))
def test_demo_configs_name_the_classes_the_demo_data_holds(config):
    """Each demo config repeats the generator's class names (configs cannot import them); the lists must agree, in
    order, or labels would be reported under the wrong names (COCO maps category names to labels by this list)."""
    from evit_mm.data.demo_ade20k import DEMO_SEG_CLASSES
    from evit_mm.data.shapes import SHAPE_CLASSES
    cfg = Config.fromfile(str(REPO_ROOT / 'configs/demo' / config))
    if 'ade20k' in config:
        assert tuple(cfg.metainfo['classes']) == DEMO_SEG_CLASSES
        assert cfg.model.decode_head.num_classes == len(DEMO_SEG_CLASSES) == len(cfg.metainfo['palette'])
    elif 'coco' in config:
        assert tuple(cfg.metainfo['classes'][:len(SHAPE_CLASSES)]) == SHAPE_CLASSES
        loaders = [cfg[name] for name in ('train_dataloader', 'val_dataloader', 'test_dataloader') if cfg[name]]
        assert loaders and all(loader.dataset.metainfo == cfg.metainfo for loader in loaders)
    else:  # ImageNet folder layout: the classes are the folder names the generator writes
        assert cfg.model.num_classes == cfg.model.data_preprocessor.num_classes == len(SHAPE_CLASSES)

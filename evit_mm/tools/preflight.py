"""Checks run before training or testing starts, so that bad input stops with a message saying what is wrong
and what would be right, instead of failing minutes later deep inside a data loader or a forward pass."""
from __future__ import annotations

import os
import os.path as osp
from collections.abc import Iterator
from typing import Any

from mmengine.config import Config, ConfigDict

_LAYOUT_HINTS = {
    'CocoDataset': 'the standard COCO layout: data/coco/annotations/instances_{train,val}2017.json and '
                   'data/coco/{train,val}2017/; `make demo` writes a small one to data/coco_demo',
    'ADE20KDataset': 'the standard ADE20K layout: data/ade/ADEChallengeData2016/{images,annotations}/'
                     '{training,validation}',
    'ImageFolderDataset': 'the ImageNet folder layout: data/imagenet/{train,val}/<class>/*.JPEG',
}


class PreflightError(ValueError):
    """A configuration problem found before training or testing started."""


def _datasets(dataset: Any, where: str) -> Iterator[tuple[str, dict]]:
    """Yield every leaf dataset config inside wrappers (RepeatDataset, ConcatDataset, ...)."""
    if isinstance(dataset, (list, tuple)):
        for i, d in enumerate(dataset):
            yield from _datasets(d, f'{where}[{i}]')
    elif isinstance(dataset, dict):
        if 'datasets' in dataset:
            yield from _datasets(dataset['datasets'], f'{where}.datasets')
        elif 'dataset' in dataset:
            yield from _datasets(dataset['dataset'], f'{where}.dataset')
        else:
            yield where, dataset


def _join(root: str | None, path: str) -> str:
    return path if (not root or osp.isabs(path) or path.startswith(root)) else osp.join(root, path)


def check_datasets(cfg: Config, loaders: tuple[str, ...] = ('train_dataloader', 'val_dataloader',
                                                            'test_dataloader')) -> None:
    """Every local data root, annotation file and image/label folder that a dataloader names must exist."""
    problems = []
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not loader_cfg or 'dataset' not in loader_cfg:
            continue
        for where, ds in _datasets(loader_cfg['dataset'], f'{loader}.dataset'):
            root = ds.get('data_root')
            hint = _LAYOUT_HINTS.get(str(ds.get('type')), 'the layout the dataset type expects')
            if root and not osp.isdir(root):
                problems.append(f'{where}.data_root: folder {root!r} does not exist (expected {hint})')
                continue
            ann = ds.get('ann_file')
            if ann and not osp.isfile(_join(root, ann)):
                problems.append(f'{where}.ann_file: {_join(root, ann)!r} does not exist (expected {hint})')
            for key, prefix in (ds.get('data_prefix') or {}).items():
                if prefix and not osp.isdir(_join(root, prefix)):
                    problems.append(f'{where}.data_prefix.{key}: folder {_join(root, prefix)!r} does not exist '
                                    f'(expected {hint})')
    if problems:
        raise PreflightError('dataset not found:\n  ' + '\n  '.join(problems) +
                             '\nPut the data there, or point the config at it with --cfg-options '
                             '<loader>.dataset.data_root=PATH.')


def num_classes_of_model(model: ConfigDict) -> list[tuple[str, int]]:
    """Every ``num_classes`` a model config gives (its own, its heads' and its data preprocessor's, which makes
    the classifier's mixup targets), with the option name that sets it."""
    found = [('model.num_classes', model['num_classes'])] if 'num_classes' in model else []
    preprocessor = model.get('data_preprocessor')
    if isinstance(preprocessor, dict) and 'num_classes' in preprocessor:
        found.append(('model.data_preprocessor.num_classes', preprocessor['num_classes']))
    for head in ('bbox_head', 'decode_head', 'auxiliary_head', 'head'):
        cfg = model.get(head)
        if isinstance(cfg, dict) and 'num_classes' in cfg:
            found.append((f'model.{head}.num_classes', cfg['num_classes']))
    roi = model.get('roi_head')
    if isinstance(roi, dict):
        for head in ('bbox_head', 'mask_head'):
            cfg = roi.get(head)
            if isinstance(cfg, dict) and 'num_classes' in cfg:
                found.append((f'model.roi_head.{head}.num_classes', cfg['num_classes']))
    return found


def _dataset_classes(ds: dict, scope: str | None) -> tuple[str, ...] | None:
    meta = ds.get('metainfo')
    if isinstance(meta, dict) and meta.get('classes'):
        return tuple(meta['classes'])
    from mmengine.registry import DATASETS
    type_name = ds.get('type')
    if not isinstance(type_name, str):
        return None
    if type_name == 'ImageFolderDataset' and osp.isdir(ds.get('data_root', '')):
        return tuple(sorted(e.name for e in os.scandir(ds['data_root']) if e.is_dir()))
    try:
        dataset_cls = DATASETS.get(f'{scope}.{type_name}' if scope and '.' not in type_name else type_name)
    except Exception:  # noqa: BLE001 - unknown type: the runner will report it
        return None
    classes = getattr(dataset_cls, 'METAINFO', {}).get('classes') if dataset_cls else None
    return tuple(classes) if classes else None


def check_num_classes(cfg: Config) -> None:
    """The model's heads must predict as many classes as the training data has."""
    loader = cfg.get('train_dataloader') or cfg.get('test_dataloader')
    if not loader or 'model' not in cfg:
        return
    leaves = list(_datasets(loader.get('dataset'), 'dataset'))
    if not leaves:
        return
    classes = _dataset_classes(leaves[0][1], cfg.get('default_scope'))
    if classes is None:
        return
    for name, value in num_classes_of_model(cfg.model):
        if value != len(classes):
            raise PreflightError(
                f'{name} is {value}, but the dataset has {len(classes)} classes {list(classes)[:8]}...; '
                f'set {name}={len(classes)} (or the dataset metainfo.classes to the classes you train on)')


def runner_model(runner: Any) -> Any:
    """The detector, segmentor or classifier a runner holds, without mmengine's distributed wrapper and a test-time
    augmentation model around it (the model-level checks, checkpoints and deployment act on it)."""
    from mmengine.model import BaseTTAModel, is_model_wrapper
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    return model.module if isinstance(model, BaseTTAModel) else model


def check_backbone_neck(model: Any) -> None:
    """A built model's neck must take the channels its backbone gives (e.g. after changing ``arch``)."""
    backbone, neck = getattr(model, 'backbone', None), getattr(model, 'neck', None)
    given = getattr(backbone, 'out_channels', None)
    wanted = getattr(neck, 'in_channels', None)
    if given is not None and wanted is not None and list(given) != list(wanted):
        raise PreflightError(f'the neck expects in_channels={list(wanted)} but the backbone '
                             f'({type(backbone).__name__}) gives {list(given)}; set model.neck.in_channels='
                             f'{list(given)}')


def _efficientvit_configs(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        if str(node.get('type', '')).split('.')[-1] == 'EfficientViT':
            yield node
        for value in node.values():
            yield from _efficientvit_configs(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _efficientvit_configs(value)


def check_backbone_arguments(cfg: Config) -> None:
    """Every EfficientViT in the model takes its arguments (arch, out_indices, window_size, frozen_stages, a
    Pretrained init_cfg's keys, ...): each is built on the ``meta`` device, which allocates nothing and loads no
    weights, so that a bad value stops the run before the data and the runner are set up."""
    import torch

    from ..models.backbones import EfficientViT
    for backbone in _efficientvit_configs(cfg.get('model', {})):
        arguments = {key: value for key, value in backbone.items() if key != 'type'}
        try:
            with torch.device('meta'):
                EfficientViT(**arguments)
        except (TypeError, ValueError) as error:
            raise PreflightError(f'model backbone: {error}') from None


def check_mixup_batches(cfg: Config) -> None:
    """The classifier's mixup/cutmix (timm's ``Mixup``, which pairs each image with its mirror in the batch) takes
    even batches only: an odd ``batch_size``, or a last batch of any size (``drop_last`` off), would stop training
    at its first or last step of an epoch."""
    preprocessor = cfg.get('model', {}).get('data_preprocessor')
    loader = cfg.get('train_dataloader')
    if not isinstance(preprocessor, dict) or not preprocessor.get('mixup') or not loader:
        return
    if loader.get('batch_size', 1) % 2:
        raise PreflightError(f'mixup/cutmix (model.data_preprocessor.mixup) needs an even batch size, and '
                             f'train_dataloader.batch_size is {loader.get("batch_size", 1)}; make it even or set '
                             f'model.data_preprocessor.mixup=None')
    if not loader.get('drop_last', False):
        raise PreflightError('mixup/cutmix (model.data_preprocessor.mixup) needs even batches, and without '
                             'train_dataloader.drop_last=True the last batch of an epoch can be odd; set it (the '
                             'ImageNet configs do)')


def run_preflight(cfg: Config, loaders: tuple[str, ...]) -> None:
    """All config-level checks; model-level ones run once the runner has built the model."""
    check_backbone_arguments(cfg)
    check_datasets(cfg, loaders)
    check_num_classes(cfg)
    if 'train_dataloader' in loaders:
        check_mixup_batches(cfg)


def check_checkpoint_fits(model: Any, checkpoint: str) -> dict:
    """A checkpoint given to test or fine-tune (``load_from``) must hold every weight of the model with its
    shape; mmengine would otherwise load it partially with only a warning (another arch, another task). An
    official downstream checkpoint's backbone keys are compared under the names they load as (the backbone's
    ``load_state_dict`` hook renames them). Returns the model's weights from the file, for a caller that loads
    them itself rather than have mmengine read the file again."""
    from ..checkpoint import (CheckpointMismatchError, adapt_state_dict, read_checkpoint,
                              rename_official_backbone_keys, unwrap_state_dict)
    from ..checkpoint.arch_match import other_arch
    from ..models.backbones.efficientvit import EfficientViT
    state_dict = unwrap_state_dict(read_checkpoint(checkpoint))
    for name, module in model.named_modules():
        if isinstance(module, EfficientViT):
            rename_official_backbone_keys(state_dict, f'{name}.' if name else '')
    try:
        weights, _ = adapt_state_dict(model.state_dict(), state_dict, adapt_shapes=False)
    except CheckpointMismatchError as error:
        backbone = getattr(model, 'backbone', None)
        arch = other_arch(state_dict, backbone.arch) if isinstance(backbone, EfficientViT) else None
        hint = f" Its backbone weights are EfficientViT-{arch.upper()}'s: model.backbone.arch={arch!r}?" if arch else ''
        raise PreflightError(
            f'{checkpoint!r} does not fit this model ({type(model).__name__}): {error}.{hint} ImageNet weights for '
            'the backbone go in model.backbone.init_cfg=dict(type="Pretrained", checkpoint=...) instead.') from None
    return weights

"""What the throughput tool can measure: a config (detector, segmentor, classifier) or a backbone by name."""
from __future__ import annotations

import contextlib
import difflib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

#: Backbone names accepted besides configs and ``timm:<model>``: evit_mm archs and mmdet baselines.
MMDET_BASELINES: dict[str, dict] = {
    'resnet18': dict(type='mmdet.ResNet', depth=18, out_indices=(1, 2, 3)),
    'resnet50': dict(type='mmdet.ResNet', depth=50, out_indices=(1, 2, 3)),
    'swin-t': dict(type='mmdet.SwinTransformer', embed_dims=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                   window_size=7, out_indices=(1, 2, 3)),
}


@dataclass
class Target:
    """A built model to measure."""

    name: str
    kind: str  # 'backbone', 'detector', 'segmentor', 'classifier'
    model: nn.Module
    backbone: nn.Module
    cfg: Any = None
    trained: bool = False
    notes: list[str] = field(default_factory=list)


class _TimmFeatures(nn.Module):
    """timm model as a backbone: ``features_only`` where timm supports it."""

    def __init__(self, name: str) -> None:
        super().__init__()
        import timm
        self.model = timm.create_model(name, pretrained=False, features_only=True)

    def forward(self, x: torch.Tensor):
        return self.model(x)


def _backbone_target(name: str) -> Target:
    from ..models.backbones.efficientvit import ARCH_SETTINGS
    from ..tools.preflight import PreflightError  # a ValueError that the tools print without a traceback
    lowered = name.lower()
    if lowered.startswith('timm:'):
        import timm
        if not timm.is_model(name[5:]):
            close = difflib.get_close_matches(name[5:], timm.list_models(), n=3)
            raise PreflightError(f'unknown timm model {name[5:]!r} in target {name!r}'
                                 + (f'; did you mean {", ".join(close)}?' if close else '; see timm.list_models()'))
        module = _TimmFeatures(name[5:])
    elif lowered.startswith(('evit_', 'efficientvit_')) or lowered in ARCH_SETTINGS:
        from ..models import EfficientViT
        arch = lowered.split('_')[-1]
        if arch not in ARCH_SETTINGS:
            raise PreflightError(f'unknown EfficientViT arch in target {name!r}; choose from '
                                 + ', '.join(f'evit_{known}' for known in ARCH_SETTINGS))
        module = EfficientViT(arch)
    elif lowered in MMDET_BASELINES:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        register_all_modules(init_default_scope=False)
        module = MODELS.build(dict(MMDET_BASELINES[lowered]))  # 'mmdet.' types: whatever the default scope
    else:
        raise PreflightError(f'unknown target {name!r}: give a config file (.py), an EfficientViT arch (evit_m0 '
                             f'... evit_m5), a baseline ({", ".join(MMDET_BASELINES)}) or timm:<model name>')
    module.eval()  # not chained: some mmdet backbones' train() returns None
    return Target(name, 'backbone', module, module)


@contextlib.contextmanager
def mmengine_info_silenced() -> Iterator[None]:
    """mmengine's current logger without INFO lines inside the block (an initialisation reports every parameter,
    an optimizer wrapper every parameter-wise setting: hundreds of lines); warnings still show."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _config_target(path: str, checkpoint: str | None, cfg_options: dict | None = None) -> Target:
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    scope = cfg.get('default_scope', 'mmengine')
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
        kind = 'detector'
    elif scope == 'mmseg':
        from mmseg.registry import MODELS
        kind = 'segmentor'
    else:
        from mmengine.registry import MODELS
        kind = 'classifier'
    if cfg.model.get('backbone', {}).get('init_cfg') is not None:
        cfg.model.backbone.init_cfg = None  # weights come from --checkpoint, never from the network
    cfg.model.pop('pretrained', None)
    model = MODELS.build(cfg.model)
    notes = []
    if checkpoint:
        if hasattr(model, 'load_checkpoint'):
            model.load_checkpoint(checkpoint)
        else:
            from ..tools.preflight import check_checkpoint_fits

            # read once, as tools/test.py checks it: the file's problem, or the weights that do not fit, by name;
            # every weight is there (only optional BatchNorm counters may be missing), hence strict=False
            model.load_state_dict(check_checkpoint_fits(model, checkpoint), strict=False)
    else:
        # the model's own initialisation (e.g. RetinaNet's classification prior): with PyTorch's default init
        # instead, thousands of random candidates pass the score threshold and post-processing dominates
        with mmengine_info_silenced():
            model.init_weights()
        notes.append('untrained weights (the model\'s own initialisation): post-processing time depends on how many '
                     'candidates pass the score threshold; pass --checkpoint for breakdowns of a trained model')
    name = os.path.splitext(os.path.basename(path))[0]
    model.eval()
    return Target(name, kind, model, model.backbone, cfg=cfg, trained=bool(checkpoint), notes=notes)


def is_config_spec(spec: str) -> bool:
    """Whether a target spec (an ``@`` suffix of the command line allowed) names a config file rather than a
    backbone: the one test :func:`build_target` and the command line's checks share."""
    return spec.partition('@')[0].endswith('.py')


def build_target(spec: str, checkpoint: str | None = None, cfg_options: dict | None = None) -> Target:
    """``spec``: a config path, ``evit_m4``, ``resnet50``, ``swin-t`` or ``timm:<name>``; ``cfg_options``
    override config entries (mmengine's ``--cfg-options``)."""
    if is_config_spec(spec):
        if not os.path.isfile(spec):
            raise FileNotFoundError(f'config not found: {spec!r}')
        return _config_target(spec, checkpoint, cfg_options)
    if checkpoint:
        raise ValueError('--checkpoint applies to configs, not to backbone names')
    return _backbone_target(spec)

"""EfficientViT image classifier: backbone, global average pooling, BatchNorm+Linear head (paper Sec. 3.1),
with the optional distillation head of the official code (DeiT-style, averaged with the class head at test)."""
from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from mmengine.logging import print_log
from mmengine.model import BaseDataPreprocessor, BaseModel
from mmengine.registry import MODELS as ROOT_MODELS

from ..checkpoint import (adapt_state_dict, pretrained_checkpoint, read_checkpoint, to_timm_state_dict,
                          unwrap_state_dict)
from ..registry import register_model
from .backbones import CLASSIFICATION_WINDOWS
from .layers import BNLinear


@register_model
class ClsDataPreprocessor(BaseDataPreprocessor):
    """Stacks images (already normalised by the timm transforms), moves them to the device and, in training,
    applies timm's mixup/cutmix with label smoothing (soft targets).

    Args:
        num_classes: Classes of the targets.
        mixup: Keyword arguments of ``timm.data.Mixup`` (``mixup_alpha``, ``cutmix_alpha``, ``label_smoothing``,
            ...), or None for hard labels.
    """

    def __init__(self, num_classes: int = 1000, mixup: dict | None = None) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.mixup = None
        if mixup:
            from timm.data import Mixup
            self.mixup = Mixup(num_classes=num_classes, **mixup)

    def forward(self, data: dict, training: bool = False) -> dict:
        data = self.cast_data(data)
        inputs = data['inputs']
        inputs = torch.stack(inputs) if isinstance(inputs, (list, tuple)) else inputs
        labels = data.get('data_samples')
        if labels is not None and not isinstance(labels, torch.Tensor):
            labels = torch.as_tensor(labels, device=inputs.device)
        targets = labels
        if training and labels is not None and self.mixup is not None:
            if inputs.shape[0] % 2:
                raise ValueError(f'mixup/cutmix needs an even batch size, got {inputs.shape[0]}')
            inputs, targets = self.mixup(inputs, labels)
        return dict(inputs=inputs, data_samples=dict(labels=labels, targets=targets))


#: The optional keys of the classifier's Pretrained init_cfg: no prefix, since it loads its heads too.
PRETRAINED_KEYS = ('map_location',)


@register_model
class EfficientViTClassifier(BaseModel):
    """EfficientViT classifier for ImageNet-style training with ``tools/train.py``.

    Args:
        backbone: Backbone config; ``window_size`` defaults to the classification geometry ``(7, 7, 4)``.
        num_classes: Output classes. Defaults to 1000.
        distillation: Add the official code's distillation head, to evaluate checkpoints that have one (the two
            heads' logits are averaged, as the official code does). It learns from a teacher, which this model
            does not take: training with it raises. Defaults to False.
        drop: Dropout before the linear layer(s). Defaults to 0.
        label_smoothing: Smoothing of hard labels when no mixup is used. Defaults to 0.1.
        data_preprocessor: Defaults to :class:`ClsDataPreprocessor` without mixup.
        head_mismatch: What a ``Pretrained`` checkpoint whose heads have another number of classes does:
            ``'error'`` stops, ``'reinit'`` keeps the backbone weights and re-initialises the heads (logged).
        init_cfg: ``dict(type='Pretrained', checkpoint=...)`` loads an official, timm or evit_mm classifier
            checkpoint, heads included (converted automatically).
    """

    def __init__(self, backbone: dict, num_classes: int = 1000, distillation: bool = False, drop: float = 0.0,
                 label_smoothing: float = 0.1, head_mismatch: str = 'error', data_preprocessor: dict | None = None,
                 init_cfg: dict | None = None) -> None:
        if head_mismatch not in ('error', 'reinit'):
            raise ValueError(f"head_mismatch must be 'error' or 'reinit', got {head_mismatch!r}")
        pretrained_checkpoint(init_cfg, keys=PRETRAINED_KEYS)  # its keys checked at build time
        super().__init__(data_preprocessor=data_preprocessor or dict(type='ClsDataPreprocessor'),
                         init_cfg=init_cfg)
        backbone = dict(backbone)
        backbone.setdefault('window_size', CLASSIFICATION_WINDOWS)
        backbone.setdefault('out_indices', (-1,))
        self.backbone = ROOT_MODELS.build(backbone)
        dim = self.backbone.out_channels[-1]
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.head_mismatch = head_mismatch
        self.head = BNLinear(dim, num_classes, drop=drop)
        self.head_dist = BNLinear(dim, num_classes, drop=drop) if distillation else None

    # ---- checkpoints ----------------------------------------------------------------------------------
    @staticmethod
    def convert_checkpoint(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Map an official (``head.l``), timm (``head.linear``) or evit_mm classifier checkpoint to this
        model's keys (``backbone.*``, ``head.*``, ``head_dist.*``)."""
        state = unwrap_state_dict(checkpoint)
        if any(k.startswith('backbone.') for k in state):  # already an evit_mm classifier
            return state
        state = to_timm_state_dict(state, keep_heads=True)
        return {k if k.startswith(('head.', 'head_dist.')) else f'backbone.{k}': v for k, v in state.items()}

    def load_checkpoint(self, checkpoint: str) -> None:
        """Load an official, timm or evit_mm classifier checkpoint strictly (backbone and heads).

        Heads trained for another number of classes stop the load, or are re-initialised with a warning when
        ``head_mismatch='reinit'``.
        """
        self.load_state(self.convert_checkpoint(read_checkpoint(checkpoint)), checkpoint)

    def load_state(self, state: dict[str, torch.Tensor], checkpoint: str, adapt_shapes: bool = True) -> None:
        """:meth:`load_checkpoint` of a checkpoint already read and converted (:meth:`convert_checkpoint`);
        ``checkpoint`` names it in messages. ``adapt_shapes=False`` refuses bias tables trained for other windows
        instead of resizing them (:func:`~evit_mm.checkpoint.adapt_state_dict`)."""
        ckpt_classes = state['head.linear.weight'].shape[0] if 'head.linear.weight' in state else None
        target = self.state_dict()
        if ckpt_classes is not None and ckpt_classes != self.num_classes:
            message = (f'checkpoint {checkpoint} has a {ckpt_classes}-class head, the model {self.num_classes} '
                       'classes')
            if self.head_mismatch == 'error':
                raise ValueError(message + "; set model.head_mismatch='reinit' to fine-tune from its backbone")
            print_log(message + ': heads re-initialised, backbone loaded', logger='current', level=logging.WARNING)
            target = {k: v for k, v in target.items() if not k.startswith(('head.', 'head_dist.'))}
            state = {k: v for k, v in state.items() if not k.startswith(('head.', 'head_dist.'))}
        if self.head_dist is not None and 'head_dist.linear.weight' not in state and 'head.linear.weight' in state:
            # a checkpoint without a distillation head: start it as a copy of the class head
            state.update({k.replace('head.', 'head_dist.', 1): v for k, v in state.items() if k.startswith('head.')})
        adapted, unused = adapt_state_dict(target, state, adapt_shapes=adapt_shapes)
        self.load_state_dict(adapted, strict=False)
        if unused:
            hint = (' (a distillation head: distillation=True averages it in as the official code does)'
                    if any(k.startswith('head_dist.') for k in unused) else '')
            print_log(f'{len(unused)} checkpoint keys unused{hint}: {unused[:8]}', logger='current',
                      level=logging.WARNING)

    def init_weights(self) -> None:
        pretrained = pretrained_checkpoint(self.init_cfg, keys=PRETRAINED_KEYS)
        if pretrained is not None:
            self.load_checkpoint(pretrained['checkpoint'])
            self._is_init = True
            return
        super().init_weights()

    # ---- forward --------------------------------------------------------------------------------------
    def extract_feat(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.backbone(inputs)[-1].mean(dim=(2, 3))

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        feats = self.extract_feat(inputs)
        out = self.head(feats)
        if self.head_dist is not None and not self.training:
            out = (out + self.head_dist(feats)) / 2
        return out

    def forward(self, inputs: torch.Tensor, data_samples: dict | None = None, mode: str = 'tensor'):
        if mode == 'tensor':
            return self.logits(inputs)
        if data_samples is None or data_samples.get('labels') is None:
            raise ValueError(f"mode={mode!r} needs labels in data_samples")
        if mode == 'loss':
            if self.head_dist is not None:  # it would stay untrained, then be averaged into every prediction
                raise ValueError('distillation=True: the distillation head learns from a teacher model\'s '
                                 'predictions, which EfficientViTClassifier does not take; train with '
                                 'distillation=False (the official recipe without a teacher)')
            logits = self.logits(inputs)
            targets = data_samples['targets']
            if targets.dim() == 2:  # soft targets from mixup/cutmix (label smoothing already applied)
                loss = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
            else:
                loss = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
            return dict(loss=loss)
        if mode == 'predict':
            scores = self.logits(inputs).softmax(dim=-1)
            return [dict(pred_score=s, gt_label=label) for s, label in zip(scores, data_samples['labels'])]
        raise ValueError(f"mode must be 'tensor', 'loss' or 'predict', got {mode!r}")

    def switch_to_deploy(self, fused_kernels: bool | None = None, fold_identities: bool = True,
                         prepack_weights: bool = True) -> 'EfficientViTClassifier':
        """Fuse the backbone's Conv+BN (see :meth:`EfficientViT.switch_to_deploy`, which takes the same arguments)
        and the heads' BN+Linear in place."""
        self.backbone.switch_to_deploy(fused_kernels, fold_identities, prepack_weights)
        for head in (self.head, self.head_dist):
            if head is not None:
                head.fuse()
        return self

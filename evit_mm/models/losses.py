"""Segmentation cross-entropy over channels-last logits, with mmseg's values and without its copy.

Why: EfficientViT's maps are channels-last, so a decode head's logits are too, and mmseg's ``CrossEntropyLoss`` calls
``F.cross_entropy`` on them over dim 1, whose log-softmax first copies a channels-last tensor to NCHW. For ADE20K's
150 classes at 2x512x512 (one Semantic FPN training step's logits after the resize to the labels), forward and
backward on 2 CPU threads: the loss 1192 ms, read as rows of (pixels, classes), a view of contiguous memory, 348 ms;
a Semantic FPN-EViT-M4 training iteration 1.24x faster (``docs/benchmarks.md``).
"""
from __future__ import annotations

import torch
from mmseg.models.losses import CrossEntropyLoss
from mmseg.models.losses.cross_entropy_loss import cross_entropy

from ..registry import register_model
from .grad_layout import memory_format_of


def channels_last_cross_entropy(pred: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None,
                                class_weight: torch.Tensor | None = None, reduction: str = 'mean',
                                avg_factor: float | None = None, ignore_index: int = -100,
                                avg_non_ignore: bool = False) -> torch.Tensor:
    """mmseg's ``cross_entropy`` (same arguments, same values), computed on channels-last ``(N, C, H, W)`` logits
    as ``(N*H*W, C)`` rows; other logits, and class weights (whose averaging mmseg computes per image), go to mmseg's
    function as they are."""
    if memory_format_of(pred) != torch.channels_last or class_weight is not None:
        return cross_entropy(pred, label, weight, class_weight, reduction, avg_factor, ignore_index, avg_non_ignore)
    rows = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])  # a view: channels are the contiguous dim
    loss = cross_entropy(rows, label.reshape(-1), None if weight is None else weight.reshape(-1), None, reduction,
                         avg_factor, ignore_index, avg_non_ignore)
    return loss.view(label.shape) if reduction == 'none' else loss


@register_model
class ChannelsLastCrossEntropyLoss(CrossEntropyLoss):
    """mmseg's ``CrossEntropyLoss`` (same arguments, values and loss name), whose softmax cross-entropy reads
    channels-last logits without copying them (:func:`channels_last_cross_entropy`); sigmoid and mask variants are
    mmseg's own."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.cls_criterion is cross_entropy:
            self.cls_criterion = channels_last_cross_entropy

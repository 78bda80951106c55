"""Segmentation cross-entropy over channels-last logits, with mmseg's values and without its copies.

Why: EfficientViT's maps are channels-last, so a decode head's logits are too, and mmseg's ``CrossEntropyLoss`` calls
``F.cross_entropy`` on them over dim 1, whose log-softmax first copies a channels-last tensor to NCHW. For ADE20K's
150 classes at 2x512x512 (one Semantic FPN training step's logits after the resize to the labels), forward and
backward on 2 CPU threads: the loss 1192 ms, read as rows of (pixels, classes), a view of contiguous memory, 348 ms;
a Semantic FPN-EViT-M4 training iteration 1.24x faster (``docs/benchmarks.md``).

On the CPU the rows' loss is computed block by block (:class:`_BlockwiseRowsCrossEntropy`): ``F.cross_entropy`` writes
the log-probabilities of all 524288 pixels x 150 classes (315 MB) and, in the backward pass, a zero-filled gradient
of that size and the log-softmax's gradient, each into fresh memory, and under bfloat16 autocast first a float32 copy
of the logits; blocks of a few MB stay in cache. Forward and backward of that loss: 1.3-1.45x faster in float32,
2-2.8x under bfloat16 autocast, and 315 MB less memory held for the backward pass (``docs/benchmarks.md``, "The
segmentation loss in blocks").
"""
from __future__ import annotations

import functools

import torch
from mmseg.models.losses import CrossEntropyLoss
from mmseg.models.losses.cross_entropy_loss import cross_entropy
from mmseg.models.losses.utils import weight_reduce_loss
from torch.autograd.function import once_differentiable

from ..registry import register_model
from .eager_kernels import exporting_or_compiling
from .grad_layout import memory_format_of

#: Elements of one block of rows of the blockwise cross-entropy (4 MB in float32; 2^19-2^21 measured alike).
BLOCK_ELEMENTS = 1 << 20


def _row_blocks(rows: torch.Tensor) -> tuple[torch.dtype, list[slice]]:
    """The dtype the blockwise cross-entropy computes ``rows`` in (float32, float64 for float64 rows) and its blocks
    of rows (:data:`BLOCK_ELEMENTS` each)."""
    step = max(1, BLOCK_ELEMENTS // rows.shape[1])
    return (torch.promote_types(rows.dtype, torch.float32),
            [slice(start, start + step) for start in range(0, rows.shape[0], step)])


class _BlockwiseRowsCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy(rows, labels, ignore_index=..., reduction='none')`` for ``(M, C)`` rows, in blocks of rows: the
    forward pass keeps the per-row losses only, the backward pass recomputes each block's log-softmax and writes
    ``softmax - one_hot`` (times the loss gradient) straight into the gradient. Computed in float32 (float64 for
    float64 rows), returned in that dtype; the gradient in the rows' dtype."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
        dtype, blocks = _row_blocks(rows)
        valid = labels != ignore_index
        targets = torch.where(valid, labels, 0).unsqueeze(1)
        losses = rows.new_empty(rows.shape[0], dtype=dtype)
        with torch.autocast(rows.device.type, enabled=False):
            for block in blocks:
                log_probs = torch.log_softmax(rows[block], 1, dtype=dtype)
                torch.neg(log_probs.gather(1, targets[block]).squeeze(1), out=losses[block])
        ctx.save_for_backward(rows, targets, valid)
        return losses.masked_fill_(~valid, 0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        rows, targets, valid = ctx.saved_tensors
        dtype, blocks = _row_blocks(rows)
        scale = (grad_losses.to(dtype) * valid).unsqueeze(1)  # ignored rows get no gradient
        grad = torch.empty_like(rows)
        with torch.autocast(rows.device.type, enabled=False):
            for block in blocks:
                probs = torch.log_softmax(rows[block], 1, dtype=dtype).exp_()
                probs.scatter_add_(1, targets[block], probs.new_full(targets[block].shape, -1.0))
                grad[block].copy_(probs.mul_(scale[block]))
        return grad, None, None


def channels_last_cross_entropy(pred: torch.Tensor, label: torch.Tensor, weight: torch.Tensor | None = None,
                                class_weight: torch.Tensor | None = None, reduction: str = 'mean',
                                avg_factor: float | None = None, ignore_index: int = -100,
                                avg_non_ignore: bool = False, blockwise: bool = True) -> torch.Tensor:
    """mmseg's ``cross_entropy`` (same arguments, same values), computed on channels-last ``(N, C, H, W)`` logits
    as ``(N*H*W, C)`` rows, on the CPU in blocks unless ``blockwise`` is False (:class:`_BlockwiseRowsCrossEntropy`;
    the per-pixel losses are float32 there also for bfloat16 logits outside autocast, where mmseg's would be
    bfloat16); other logits, and class weights (whose averaging mmseg computes per image), go to mmseg's function as
    they are."""
    if memory_format_of(pred) != torch.channels_last or class_weight is not None:
        return cross_entropy(pred, label, weight, class_weight, reduction, avg_factor, ignore_index, avg_non_ignore)
    rows = pred.permute(0, 2, 3, 1).reshape(-1, pred.shape[1])  # a view: channels are the contiguous dim
    labels, weight = label.reshape(-1), None if weight is None else weight.reshape(-1)
    if not (blockwise and rows.is_cpu) or exporting_or_compiling():  # GPUs: one kernel per pass; graphs: torch's op
        loss = cross_entropy(rows, labels, weight, None, reduction, avg_factor, ignore_index, avg_non_ignore)
    else:
        loss = _BlockwiseRowsCrossEntropy.apply(rows, labels, ignore_index)
        # what mmseg's cross_entropy does with F.cross_entropy's losses when there are no class weights
        if avg_factor is None and reduction == 'mean':
            avg_factor = labels.numel() - (labels == ignore_index).sum().item() if avg_non_ignore else labels.numel()
        loss = weight_reduce_loss(loss, None if weight is None else weight.float(), reduction, avg_factor)
    return loss.view(label.shape) if reduction == 'none' else loss


@register_model
class ChannelsLastCrossEntropyLoss(CrossEntropyLoss):
    """mmseg's ``CrossEntropyLoss`` (same arguments, values and loss name), whose softmax cross-entropy reads
    channels-last logits without copying them (:func:`channels_last_cross_entropy`); sigmoid and mask variants are
    mmseg's own.

    Args:
        blockwise: On the CPU, compute the loss of the rows in blocks (:class:`_BlockwiseRowsCrossEntropy`); False
            calls ``F.cross_entropy`` on all rows at once. Defaults to True.
        **kwargs: mmseg's ``CrossEntropyLoss`` arguments.
    """

    def __init__(self, blockwise: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        if self.cls_criterion is cross_entropy:
            self.cls_criterion = functools.partial(channels_last_cross_entropy, blockwise=blockwise)

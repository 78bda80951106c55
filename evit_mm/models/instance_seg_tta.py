"""Test-time augmentation for detectors that predict instance masks (Mask R-CNN), which mmdet's own does not merge.

mmdet 3.x's ``DetTTAModel`` maps every view's boxes back to the image, concatenates them and keeps what NMS keeps;
for a model that predicts masks it asserts "TTA of instance segmentation does not support now" at the first image.
:class:`InstanceSegTTAModel` merges the same way and carries each detection's mask along: the masks, which mmdet's
mask heads paste at the original image size for every view, are flipped back like their boxes and NMS keeps the
mask of each box it keeps. Predictions without masks are merged by ``DetTTAModel`` itself.
"""
from __future__ import annotations

import torch
from mmcv.ops import batched_nms
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from ..registry import register_model

#: The image axes each of mmdet's flip directions (``RandomFlip``, ``bbox_flip``) reverses, of a ``(..., H, W)`` map.
FLIP_DIMS = {'horizontal': (-1,), 'vertical': (-2,), 'diagonal': (-2, -1)}


def unflip_masks(masks: torch.Tensor, metainfo: dict) -> torch.Tensor:
    """The ``(N, H, W)`` masks of a view in the unflipped image's orientation (``metainfo``: ``flip`` and
    ``flip_direction`` as mmdet's ``RandomFlip`` records them)."""
    if not metainfo.get('flip', False):
        return masks
    direction = metainfo.get('flip_direction')
    if direction not in FLIP_DIMS:
        raise ValueError(f'InstanceSegTTAModel: unknown flip_direction {direction!r} in a view\'s metainfo; '
                         f'valid: {sorted(FLIP_DIMS)}')
    return masks.flip(FLIP_DIMS[direction])


@register_model
class InstanceSegTTAModel(DetTTAModel):
    """mmdet's ``DetTTAModel`` that also merges instance masks (see the module docstring).

    Config: ``tta_model = dict(type='InstanceSegTTAModel', tta_cfg=dict(nms=dict(type='nms', iou_threshold=0.5),
    max_per_img=100))``, as for ``DetTTAModel``; ``tools/test.py --tta`` uses it for configs whose model has a mask
    head and that name no ``tta_model``.
    """

    def _merge_single_sample(self, data_samples: list[DetDataSample]) -> DetDataSample:
        instances = [sample.pred_instances for sample in data_samples]
        if instances[0].get('masks', None) is None:
            return super()._merge_single_sample(data_samples)
        view_masks = [i.get('masks', None) for i in instances]
        shapes = {tuple(m.shape[-2:]) for m in view_masks if isinstance(m, torch.Tensor)}
        if not all(isinstance(m, torch.Tensor) for m in view_masks) or len(shapes) > 1:
            raise ValueError(f'InstanceSegTTAModel merges views whose masks are tensors of the original image\'s size '
                             f'(mmdet\'s mask heads with rescale=True); got {[type(m).__name__ for m in view_masks]} '
                             f'of sizes {sorted(shapes)}')
        metainfos = [sample.metainfo for sample in data_samples]
        bboxes, scores = self.merge_aug_bboxes([i.bboxes for i in instances], [i.scores for i in instances], metainfos)
        if bboxes.numel() == 0:
            return data_samples[0]
        labels = torch.cat([i.labels for i in instances])
        masks = torch.cat([unflip_masks(m, meta) for m, meta in zip(view_masks, metainfos)])
        detections, keep = batched_nms(bboxes, scores, labels, self.tta_cfg.nms)
        keep = keep[:self.tta_cfg.max_per_img]
        detections = detections[:self.tta_cfg.max_per_img]
        merged = data_samples[0]
        merged.pred_instances = InstanceData(bboxes=detections[:, :-1], scores=detections[:, -1], labels=labels[keep],
                                             masks=masks[keep])
        return merged

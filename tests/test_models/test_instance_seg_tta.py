"""InstanceSegTTAModel: mmdet's detection TTA merge, with each kept box's mask flipped back and carried along."""
from __future__ import annotations

import pytest
import torch
from mmdet.models.test_time_augs import DetTTAModel
from mmdet.structures import DetDataSample
from mmengine.config import ConfigDict
from mmengine.structures import InstanceData
from torch import nn

from evit_mm.models.instance_seg_tta import InstanceSegTTAModel, unflip_masks

HEIGHT, WIDTH = 6, 10
TTA_CFG = ConfigDict(nms=dict(type='nms', iou_threshold=0.5), max_per_img=100)


class _Detector(nn.Module):
    """What BaseTTAModel asks of the model it wraps (the merge under test never calls it)."""

    def test_step(self, data: dict) -> list:
        raise AssertionError('not called by merge_preds')


def _box_mask(box: list[float]) -> torch.Tensor:
    """A mask filling ``box`` (x1, y1, x2, y2; integers) in a HEIGHT x WIDTH image."""
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    x1, y1, x2, y2 = (int(v) for v in box)
    mask[y1:y2, x1:x2] = True
    return mask


def _view(boxes: list[list[float]], scores: list[float], labels: list[int], flip: str | None,
          masks: bool = True) -> DetDataSample:
    """One view's prediction of boxes given in the unflipped image, expressed as that view sees them."""
    boxes_t = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    mask_t = torch.stack([_box_mask(b) for b in boxes]) if boxes else torch.zeros(0, HEIGHT, WIDTH, dtype=torch.bool)
    if flip == 'horizontal':
        boxes_t = torch.stack([WIDTH - boxes_t[:, 2], boxes_t[:, 1], WIDTH - boxes_t[:, 0], boxes_t[:, 3]], dim=1)
        mask_t = mask_t.flip(-1)
    sample = DetDataSample(metainfo=dict(ori_shape=(HEIGHT, WIDTH), img_shape=(HEIGHT, WIDTH), flip=flip is not None,
                                         flip_direction=flip))
    sample.pred_instances = InstanceData(bboxes=boxes_t, scores=torch.tensor(scores), labels=torch.tensor(labels))
    if masks:
        sample.pred_instances.masks = mask_t
    return sample


def test_masks_follow_their_boxes_through_unflipping_and_nms():
    model = InstanceSegTTAModel(module=_Detector(), tta_cfg=TTA_CFG)
    left, right, top = [0, 0, 3, 4], [6, 1, 10, 6], [2, 0, 8, 2]
    # the flipped view sees the left object better (kept from it) and alone sees the top one
    flipped = _view([left, top], [0.9, 0.4], [0, 1], 'horizontal')
    plain = _view([left, right], [0.6, 0.8], [0, 0], None)
    merged = model.merge_preds([[flipped, plain]])[0].pred_instances
    assert merged.scores.tolist() == pytest.approx([0.9, 0.8, 0.4])
    assert merged.bboxes.tolist() == [left, right, top]
    assert merged.labels.tolist() == [0, 0, 1]
    for box, mask in zip(merged.bboxes.tolist(), merged.masks):
        assert torch.equal(mask, _box_mask(box))  # the flipped view's masks in the image's orientation


def test_max_per_img_keeps_the_best_boxes_with_their_masks():
    model = InstanceSegTTAModel(module=_Detector(), tta_cfg=ConfigDict(TTA_CFG, max_per_img=1))
    merged = model.merge_preds([[_view([[0, 0, 3, 4], [6, 1, 10, 6]], [0.3, 0.7], [0, 0], 'horizontal'),
                                 _view([], [], [], None)]])[0].pred_instances
    assert len(merged) == 1 and merged.scores.tolist() == pytest.approx([0.7])
    assert torch.equal(merged.masks[0], _box_mask([6, 1, 10, 6]))


def test_without_masks_it_merges_as_mmdet_does():
    def views() -> list[list[DetDataSample]]:  # fresh for each model: the merge writes into the first view
        return [[_view([[0, 0, 3, 4], [1, 0, 3, 4]], [0.9, 0.5], [0, 0], 'horizontal', masks=False),
                 _view([[6, 1, 10, 6]], [0.8], [2], None, masks=False)]]
    ours = InstanceSegTTAModel(module=_Detector(), tta_cfg=TTA_CFG).merge_preds(views())[0].pred_instances
    theirs = DetTTAModel(module=_Detector(), tta_cfg=TTA_CFG).merge_preds(views())[0].pred_instances
    assert 'masks' not in ours
    for key in ('bboxes', 'scores', 'labels'):
        torch.testing.assert_close(ours[key], theirs[key])


def test_unflip_masks_per_direction_and_unknown_direction_named():
    masks = torch.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert torch.equal(unflip_masks(masks, dict(flip=False)), masks)
    assert torch.equal(unflip_masks(masks, dict(flip=True, flip_direction='horizontal')), masks.flip(-1))
    assert torch.equal(unflip_masks(masks, dict(flip=True, flip_direction='vertical')), masks.flip(-2))
    assert torch.equal(unflip_masks(masks, dict(flip=True, flip_direction='diagonal')), masks.flip(-2, -1))
    with pytest.raises(ValueError, match=r"unknown flip_direction 'sideways'.*valid: \['diagonal', 'horizontal', "
                                         r"'vertical'\]"):
        unflip_masks(masks, dict(flip=True, flip_direction='sideways'))


def test_views_with_masks_of_different_sizes_or_without_masks_are_refused():
    model = InstanceSegTTAModel(module=_Detector(), tta_cfg=TTA_CFG)
    small = _view([[0, 0, 3, 4]], [0.9], [0], None)
    small.pred_instances.masks = small.pred_instances.masks[:, :4]
    with pytest.raises(ValueError, match="masks are tensors of the original image's size"):
        model.merge_preds([[small, _view([[0, 0, 3, 4]], [0.9], [0], None)]])
    no_masks = _view([[0, 0, 3, 4]], [0.9], [0], None, masks=False)
    with pytest.raises(ValueError, match=r"got \['Tensor', 'NoneType'\]"):
        model.merge_preds([[_view([[0, 0, 3, 4]], [0.9], [0], None), no_masks]])

"""ChannelsLastCrossEntropyLoss: mmseg's CrossEntropyLoss values and gradients, channels-last logits read in place."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from mmseg.models.losses import CrossEntropyLoss
from mmseg.registry import MODELS as MMSEG_MODELS

from evit_mm.models.losses import ChannelsLastCrossEntropyLoss, channels_last_cross_entropy
from tests.conftest import REPO_ROOT


def _logits_and_labels(channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 7, 13, 11, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 7, (2, 13, 11), generator=generator)
    labels[0, :3] = 255  # ignored pixels
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    return logits, labels


@pytest.mark.parametrize('channels_last', [True, False])
@pytest.mark.parametrize('kwargs, call', [
    ({}, {}), (dict(avg_non_ignore=True), {}), (dict(loss_weight=0.4), {}), ({}, dict(reduction_override='sum')),
    ({}, dict(reduction_override='none')), ({}, dict(weight=True)), (dict(class_weight=[1.0, 2, 1, 1, 3, 1, 1]), {}),
    (dict(reduction='none', avg_non_ignore=True), dict(weight=True))])
def test_values_and_gradients_are_mmsegs(channels_last, kwargs, call):
    logits, labels = _logits_and_labels(channels_last)
    if 'class_weight' in kwargs:  # mmseg averages class weights indexed by every label, ignored ones too: none here
        labels = torch.where(labels == 255, 0, labels)
    if call.get('weight'):
        call = dict(call, weight=torch.rand(labels.shape, generator=torch.Generator().manual_seed(1)))
    results = []
    for loss in (CrossEntropyLoss(**kwargs), ChannelsLastCrossEntropyLoss(**kwargs)):
        leaf = logits.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        value = loss(leaf, labels, ignore_index=255, **call)
        value.sum().backward()
        results.append((value, leaf.grad))
    (expected, expected_grad), (value, grad) = results
    assert value.shape == expected.shape
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-12, atol=1e-12)
    assert ChannelsLastCrossEntropyLoss(**kwargs).loss_name == 'loss_ce'


def test_channels_last_logits_are_read_in_place(monkeypatch):
    """The log-softmax runs on (pixels, classes) rows of the logits' own memory: no copy of the logits to NCHW."""
    logits, labels = _logits_and_labels(channels_last=True)
    seen = []
    original = torch.nn.functional.cross_entropy

    def recording(pred, *args, **kwargs):
        seen.append(pred)
        return original(pred, *args, **kwargs)
    monkeypatch.setattr(torch.nn.functional, 'cross_entropy', recording)
    channels_last_cross_entropy(logits, labels, ignore_index=255)
    assert seen[0].shape == (2 * 13 * 11, 7) and seen[0].is_contiguous()
    assert seen[0].untyped_storage().data_ptr() == logits.untyped_storage().data_ptr()


def test_sigmoid_variant_stays_mmsegs():
    mmseg_criterion = CrossEntropyLoss(use_sigmoid=True).cls_criterion
    assert ChannelsLastCrossEntropyLoss(use_sigmoid=True).cls_criterion is mmseg_criterion


@pytest.mark.parametrize('config, heads', [('configs/fpn_evit_m4_ade20k.py', ['decode_head']),
                                           ('configs/upernet_evit_m4_ade20k.py', ['decode_head', 'auxiliary_head']),
                                           ('configs/demo/fpn_evit_m0_ade20k_demo.py', ['decode_head'])])
def test_segmentation_configs_use_it_with_their_weights(config, heads):
    cfg = Config.fromfile(str(REPO_ROOT / config))
    for head in heads:
        loss = MMSEG_MODELS.build(cfg.model[head].loss_decode)
        assert isinstance(loss, ChannelsLastCrossEntropyLoss) and not loss.use_sigmoid
        assert loss.loss_weight == (0.4 if head == 'auxiliary_head' else 1.0)

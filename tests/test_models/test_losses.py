"""ChannelsLastCrossEntropyLoss: mmseg's CrossEntropyLoss values and gradients, channels-last logits read in place."""
from __future__ import annotations

import pytest
import torch
from mmengine.config import Config
from mmseg.models.losses import CrossEntropyLoss
from mmseg.registry import MODELS as MMSEG_MODELS

from evit_mm.models import losses
from evit_mm.models.losses import ChannelsLastCrossEntropyLoss, channels_last_cross_entropy
from tests.conftest import REPO_ROOT
from tests.helpers import DEVICES


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


def test_channels_last_logits_are_read_in_place_in_blocks(monkeypatch):
    """On the CPU the log-softmax runs on blocks of (pixels, classes) rows of the logits' own memory: no copy of the
    logits to NCHW, no log-probabilities of all pixels at once."""
    monkeypatch.setattr(losses, 'BLOCK_ELEMENTS', 7 * 50)  # 50 rows per block: 286 rows in 6 blocks
    logits, labels = _logits_and_labels(channels_last=True)
    seen = []
    original = torch.log_softmax

    def recording(rows, *args, **kwargs):
        seen.append(rows)
        return original(rows, *args, **kwargs)
    monkeypatch.setattr(torch, 'log_softmax', recording)
    channels_last_cross_entropy(logits, labels, ignore_index=255)
    assert [rows.shape for rows in seen] == [(50, 7)] * 5 + [(36, 7)]
    assert all(rows.is_contiguous() for rows in seen)
    assert seen[0].untyped_storage().data_ptr() == logits.untyped_storage().data_ptr()


@pytest.mark.parametrize('kwargs, call', [({}, {}), (dict(avg_non_ignore=True), dict(weight=True)),
                                          ({}, dict(reduction_override='none'))])
def test_many_blocks_give_mmsegs_values_and_gradients(monkeypatch, kwargs, call):
    monkeypatch.setattr(losses, 'BLOCK_ELEMENTS', 7 * 9)  # 9 rows per block, the last one partial
    test_values_and_gradients_are_mmsegs(True, kwargs, call)


def test_blockwise_can_be_switched_off(monkeypatch):
    logits, labels = _logits_and_labels(channels_last=True)
    calls = []
    original = losses._BlockwiseRowsCrossEntropy.apply
    monkeypatch.setattr(losses._BlockwiseRowsCrossEntropy, 'apply', lambda *args: calls.append(args) or original(*args))
    expected = CrossEntropyLoss()(logits, labels, ignore_index=255)
    off = ChannelsLastCrossEntropyLoss(blockwise=False)(logits, labels, ignore_index=255)
    assert not calls
    on = ChannelsLastCrossEntropyLoss()(logits, labels, ignore_index=255)
    assert len(calls) == 1
    torch.testing.assert_close(off, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(on, expected, rtol=1e-12, atol=1e-12)


def test_under_bfloat16_autocast_the_same_as_mmsegs():
    """Under CPU autocast mmseg's loss computes in float32 from the bfloat16 logits, and so does the blockwise one:
    float32 losses, bfloat16 gradients, the same values."""
    logits, labels = _logits_and_labels(channels_last=True)
    results = []
    for loss in (CrossEntropyLoss(), ChannelsLastCrossEntropyLoss()):
        leaf = logits.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            value = loss(leaf, labels, ignore_index=255)
        value.backward()
        results.append((value, leaf.grad))
    (expected, expected_grad), (value, grad) = results
    assert value.dtype == expected.dtype == torch.float32 and grad.dtype == expected_grad.dtype == torch.bfloat16
    torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize('device', DEVICES)
def test_values_match_mmsegs_on_every_device(device):
    logits, labels = _logits_and_labels(channels_last=True)
    logits, labels = logits.to(device), labels.to(device)
    expected = CrossEntropyLoss()(logits, labels, ignore_index=255)
    torch.testing.assert_close(ChannelsLastCrossEntropyLoss()(logits, labels, ignore_index=255), expected,
                               rtol=1e-12, atol=1e-12)


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

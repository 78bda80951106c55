"""The OpenMMLab stack works on this torch: compiled mmcv ops, mmdet/mmseg models from their own configs,
and mmengine training that resumes under torch's safe checkpoint loading."""
from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

import evit_mm  # noqa: F401  (registers models, installs the safe-loading allow-list)
from evit_mm.compat.safe_checkpoints import load_weights_only


def test_mmcv_compiled_ops_run():
    from mmcv.ops import RoIAlign, nms
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], dtype=torch.float32)
    scores = torch.tensor([0.9, 0.8, 0.7])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert dets.shape == (2, 5)
    feats = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8)
    rois = torch.tensor([[0, 0, 0, 4, 4]], dtype=torch.float32)
    out = RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2, aligned=True)(feats, rois)
    assert out.shape == (1, 1, 2, 2)
    assert torch.all(out[0, 0, 1] > out[0, 0, 0])  # rows further down the map hold larger values


def _config(tmp_path: Path, base: str, extra: str = '') -> Config:
    path = tmp_path / 'cfg.py'
    path.write_text(f"_base_ = ['{base}']\n{extra}\n")
    return Config.fromfile(str(path))


@pytest.mark.parametrize('base, with_mask', [
    ('mmdet::_base_/models/retinanet_r50_fpn.py', False),
    ('mmdet::_base_/models/mask-rcnn_r50_fpn.py', True),
])
def test_mmdet_detectors_from_their_own_configs(tmp_path, base, with_mask):
    from mmdet.registry import MODELS
    from mmdet.testing import demo_mm_inputs
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = _config(tmp_path, base, "model = dict(backbone=dict(depth=18, init_cfg=None), "
                                  "neck=dict(in_channels=[64, 128, 256, 512]))")
    model = MODELS.build(cfg.model)
    model.init_weights()
    packed = demo_mm_inputs(2, [(3, 96, 128), (3, 128, 96)], num_classes=80, with_mask=with_mask)
    data = model.data_preprocessor(packed, True)
    losses = model(**data, mode='loss')
    total = sum(v for k, v in losses.items() if 'loss' in k and isinstance(v, torch.Tensor)) + \
        sum(sum(v) for k, v in losses.items() if 'loss' in k and isinstance(v, list))
    assert torch.isfinite(total) and total > 0
    total.backward()
    model.eval()
    with torch.no_grad():
        results = model(**model.data_preprocessor(packed, False), mode='predict')
    assert len(results) == 2 and results[0].pred_instances.bboxes.shape[-1] == 4
    if with_mask:
        assert 'masks' in results[0].pred_instances


def test_mmseg_encoder_decoder_from_its_own_config(tmp_path):
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample
    from mmseg.utils import register_all_modules
    register_all_modules()
    cfg = _config(tmp_path, 'mmseg::_base_/models/fpn_r50.py',
                  "model = dict(pretrained=None, data_preprocessor=dict(size=(64, 96)), backbone=dict(depth=18), "
                  "neck=dict(in_channels=[64, 128, 256, 512]), decode_head=dict(num_classes=5))")
    model = MODELS.build(cfg.model)
    model.init_weights()
    inputs, samples = [], []
    for h, w in [(64, 96), (64, 96)]:
        inputs.append(torch.randint(0, 255, (3, h, w), dtype=torch.uint8))
        sample = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 5, (1, h, w))))
        sample.set_metainfo(dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        samples.append(sample)
    data = model.data_preprocessor(dict(inputs=inputs, data_samples=samples), True)
    losses = model(**data, mode='loss')
    assert torch.isfinite(losses['decode.loss_ce']) and losses['decode.loss_ce'] > 0
    model.eval()
    with torch.no_grad():
        preds = model(**model.data_preprocessor(dict(inputs=inputs, data_samples=samples), False), mode='predict')
    assert preds[0].pred_sem_seg.data.shape == (1, 64, 96)


class _Pickled:
    """Any object that is not a tensor container: the safe loader must refuse it."""


def test_safe_loader_refuses_foreign_objects(tmp_path):
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'payload': _Pickled()}, path)
    with pytest.raises(pickle.UnpicklingError, match='(?i)unsupported global'):
        load_weights_only(path)  # torch's weights-only loader where it takes an allow-list, else evit_mm's
    from mmengine.runner import CheckpointLoader
    with pytest.raises(pickle.UnpicklingError):
        CheckpointLoader.load_checkpoint(str(path))


@pytest.mark.slow
def test_runner_resumes_with_safe_loading(tmp_path):
    from tests.tiny_runner import build_runner
    runner, first = build_runner(tmp_path, max_epochs=2)
    runner.train()
    assert first.iters == list(range(8))  # runner.iter before its increment, in after_train_iter
    saved = torch.load(tmp_path / 'epoch_2.pth')  # torch's default: weights_only=True
    assert saved['meta']['epoch'] == 2 and saved['meta']['iter'] == 8 and 'message_hub' in saved

    resumed, second = build_runner(tmp_path, max_epochs=3, resume=True)
    resumed.train()
    assert second.iters == [8, 9, 10, 11], 'the resumed run must continue from the saved iteration'
    start_state = second.optimizer_state_at_start['state']
    for key, value in saved['optimizer']['state'].items():
        for name in ('exp_avg', 'exp_avg_sq', 'step'):
            assert torch.equal(torch.as_tensor(start_state[key][name]), torch.as_tensor(value[name]))
    assert torch.load(tmp_path / 'epoch_3.pth')['meta']['iter'] == 12

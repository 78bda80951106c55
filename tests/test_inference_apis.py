"""Inference from user code through mmdet's and mmseg's own APIs (``init_detector``/``inference_detector``,
``init_model``/``inference_model``, ``DetInferencer``/``MMSegInferencer``), with a checkpoint such as
``tools/train.py`` writes and with the model deployed by :func:`evit_mm.deploy.optimize_for_inference`, as the README
shows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from evit_mm.deploy import optimize_for_inference
from tests.conftest import REPO_ROOT
from tests.helpers import randomize_

RETINANET = str(REPO_ROOT / 'configs/demo/retinanet_evit_m0_coco_demo.py')
MASK_RCNN = str(REPO_ROOT / 'configs/demo/mask_rcnn_evit_m0_coco_demo.py')
SEMANTIC_FPN = str(REPO_ROOT / 'configs/demo/fpn_evit_m0_ade20k_demo.py')


def _image(height: int = 180, width: int = 240) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _checkpoint(model: torch.nn.Module, classes: tuple[str, ...], path, palette: list | None = None) -> str:
    """``model``'s randomised weights saved as mmengine's checkpoint hook does (state dict and dataset meta)."""
    randomize_(model, seed=1)
    meta = {'classes': classes} | ({'palette': palette} if palette else {})
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': meta}}, path)
    return str(path)


@pytest.mark.parametrize('config', [RETINANET, MASK_RCNN], ids=['retinanet', 'mask_rcnn'])
def test_mmdet_apis_predict_the_same_before_and_after_deploy(tmp_path, config):
    from mmdet.apis import inference_detector, init_detector
    classes = ('circle', 'square', 'triangle', 'star')
    options = {'model.test_cfg.score_thr': 0.0} if config == RETINANET else {'model.test_cfg.rcnn.score_thr': 0.0}
    checkpoint = _checkpoint(init_detector(config, device='cpu', cfg_options=options), classes, tmp_path / 'c.pth')
    model = init_detector(config, checkpoint, device='cpu', cfg_options=options)
    assert model.dataset_meta['classes'] == classes
    image = _image()
    plain = inference_detector(model, image).pred_instances
    summary = optimize_for_inference(model)
    deployed = inference_detector(model, image).pred_instances
    assert summary.fused == 'EfficientViT' and summary.winograd_convs > 0
    assert len(plain) > 0
    # the same detections (random weights: compare the best ones, whose order no near-tie can swap)
    top = min(len(plain), 10)
    torch.testing.assert_close(deployed.scores[:top], plain.scores[:top], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(deployed.bboxes[:top], plain.bboxes[:top], rtol=1e-4, atol=1e-2)
    if config == MASK_RCNN:
        assert summary.roi_aligns > 0
        assert deployed.masks.shape == plain.masks.shape and deployed.masks.shape[1:] == image.shape[:2]
        agree = (deployed.masks[:top] == plain.masks[:top]).float().mean()
        assert agree > 0.999


def test_mmseg_apis_predict_the_same_before_and_after_deploy(tmp_path):
    from mmseg.apis import inference_model, init_model
    classes = tuple(f'class{i}' for i in range(4))
    model = init_model(SEMANTIC_FPN, device='cpu')
    checkpoint = _checkpoint(model, classes, tmp_path / 'c.pth')
    model = init_model(SEMANTIC_FPN, checkpoint, device='cpu')
    image = _image()
    plain = inference_model(model, image)
    optimize_for_inference(model)
    deployed = inference_model(model, image)
    assert plain.seg_logits.data.shape[1:] == image.shape[:2]
    torch.testing.assert_close(deployed.seg_logits.data, plain.seg_logits.data, rtol=1e-4, atol=1e-4)
    assert (deployed.pred_sem_seg.data == plain.pred_sem_seg.data).float().mean() > 0.999


def test_mmdet_and_mmseg_inferencers_build_and_run_the_model(tmp_path):
    """mmdet 3.x's and mmseg 1.x's recommended entry points (``DetInferencer``, ``MMSegInferencer``) take the configs
    and checkpoints as they are, predict what the plain APIs predict and draw the results."""
    from mmdet.apis import DetInferencer, inference_detector, init_detector
    from mmseg.apis import MMSegInferencer, inference_model, init_model
    image = _image()
    options = {'model.test_cfg.score_thr': 0.0}
    detector = init_detector(RETINANET, device='cpu', cfg_options=options)
    checkpoint = _checkpoint(detector, ('circle', 'square', 'triangle', 'star'), tmp_path / 'det.pth')
    inferencer = DetInferencer(RETINANET, checkpoint, device='cpu', show_progress=False)
    inferencer.model.test_cfg.score_thr = 0.0
    result = inferencer(image, return_vis=True, return_datasamples=True, no_save_pred=True)
    expected = inference_detector(init_detector(RETINANET, checkpoint, device='cpu', cfg_options=options), image)
    assert type(inferencer.model.backbone).__name__ == 'EfficientViT'
    torch.testing.assert_close(result['predictions'][0].pred_instances.scores, expected.pred_instances.scores)
    assert result['visualization'][0].shape == image.shape

    segmentor = init_model(SEMANTIC_FPN, device='cpu')
    classes = ('background', 'circle', 'square', 'triangle', 'star')
    checkpoint = _checkpoint(segmentor, classes, tmp_path / 'seg.pth', palette=[[i * 50] * 3 for i in range(5)])
    inferencer = MMSegInferencer(SEMANTIC_FPN, checkpoint, device='cpu')
    result = inferencer(image, return_vis=True, show=False)
    expected = inference_model(init_model(SEMANTIC_FPN, checkpoint, device='cpu'), image)
    assert type(inferencer.model.backbone).__name__ == 'EfficientViT'
    np.testing.assert_array_equal(result['predictions'], expected.pred_sem_seg.data[0].numpy())
    assert result['visualization'].shape == image.shape

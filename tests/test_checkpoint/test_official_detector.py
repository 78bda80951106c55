"""Official downstream detector checkpoints (RetinaNet / Mask R-CNN from Cream/EfficientViT/downstream, mmdet 2.x
files) load into evit_mm's detectors as they are: backbone keys in the official layout, neck and head keys as the
official neck and mmdet's heads name them."""
from __future__ import annotations

import re

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint

from evit_mm.tools.preflight import PreflightError, check_checkpoint_fits
from tests.conftest import REPO_ROOT

_DOWNSAMPLE_PARTS = ('res1', 'patchmerge', 'res2')


def _official_name(key: str) -> str:
    """evit_mm's backbone key -> the official code's (``patch_embed.0.c``, ``blocks2.1.conv1.c``, ...)."""
    if not key.startswith('backbone.'):
        return key
    k = key[len('backbone.'):]
    if m := re.match(r'patch_embed\.conv(\d)\.(.*)', k):
        k = f'patch_embed.{2 * (int(m[1]) - 1)}.{m[2]}'
    elif m := re.match(r'stages\.(\d)\.downsample\.(\w+)\.(.*)', k):
        k = f'blocks{int(m[1]) + 1}.{_DOWNSAMPLE_PARTS.index(m[2])}.{m[3]}'
    elif m := re.match(r'stages\.(\d)\.blocks\.(\d+)\.(.*)', k):
        k = f'blocks{int(m[1]) + 1}.{int(m[2]) + (len(_DOWNSAMPLE_PARTS) if int(m[1]) else 0)}.{m[3]}'
    return 'backbone.' + '.'.join({'conv': 'c', 'linear': 'l'}.get(p, p) for p in k.split('.'))


def _detector(config: str):
    from mmdet.registry import MODELS
    cfg = Config.fromfile(str(REPO_ROOT / config))
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('config', ['configs/demo/retinanet_evit_m0_coco_demo.py',
                                    'configs/demo/mask_rcnn_evit_m0_coco_demo.py'])
def test_official_detector_checkpoint_loads_as_it_is(config, tmp_path):
    torch.manual_seed(0)
    source = _detector(config).eval()
    for p in source.parameters():
        torch.nn.init.normal_(p, std=0.05)
    official = {_official_name(k): v for k, v in source.state_dict().items()}
    assert 'backbone.blocks2.1.conv1.c.weight' in official and 'neck.extra_trans_convs.0.conv.weight' in official
    official['backbone.blocks1.0.mixer.m.attn.attention_bias_idxs'] = torch.zeros(49, 49, dtype=torch.long)
    path = tmp_path / 'official.pth'
    torch.save({'meta': {'CLASSES': ('a', 'b', 'c', 'd'), 'mmdet_version': '2.28.2'}, 'state_dict': official}, path)

    target = _detector(config).eval()
    check_checkpoint_fits(target, str(path))  # what tools/test.py checks first
    load_checkpoint(target, str(path), map_location='cpu', strict=True)  # what mmengine's runner then does
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        for ours, theirs in zip(target.extract_feat(x), source.extract_feat(x)):
            assert torch.equal(ours, theirs)


def test_a_checkpoint_of_another_neck_is_still_refused(tmp_path):
    model = _detector('configs/demo/retinanet_evit_m0_coco_demo.py')
    state = {_official_name(k): v for k, v in model.state_dict().items() if 'extra_fpn_convs' not in k}
    torch.save({'state_dict': state}, tmp_path / 'older_neck.pth')
    with pytest.raises(PreflightError, match=r'missing keys: neck\.extra_fpn_convs\.0\.conv'):
        check_checkpoint_fits(model, str(tmp_path / 'older_neck.pth'))

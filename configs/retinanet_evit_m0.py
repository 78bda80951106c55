# RetinaNet + EfficientViT-M0 on COCO: the M4 recipe (retinanet_evit_m4.py) with the M0 backbone and its weights.
_base_ = ['./retinanet_evit_m4.py']

model = dict(
    backbone=dict(
        arch='m0',
        init_cfg=dict(checkpoint='https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/'
                                 'v1.0/efficientvit_m0.pth')),
    neck=dict(in_channels=[64, 128, 192]))

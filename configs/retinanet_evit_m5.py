# RetinaNet + EfficientViT-M5 on COCO: the M4 recipe (retinanet_evit_m4.py) with the M5 backbone and its weights.
_base_ = ['./retinanet_evit_m4.py']

model = dict(
    backbone=dict(
        arch='m5',
        init_cfg=dict(checkpoint='https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/'
                                 'v1.0/efficientvit_m5.pth')),
    neck=dict(in_channels=[192, 288, 384]))

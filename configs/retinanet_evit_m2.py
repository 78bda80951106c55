# RetinaNet + EfficientViT-M2 on COCO: the M4 recipe (retinanet_evit_m4.py) with the M2 backbone and its weights.
_base_ = ['./retinanet_evit_m4.py']

model = dict(
    backbone=dict(
        arch='m2',
        init_cfg=dict(checkpoint='https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/'
                                 'v1.0/efficientvit_m2.pth')),
    neck=dict(in_channels=[128, 192, 224]))

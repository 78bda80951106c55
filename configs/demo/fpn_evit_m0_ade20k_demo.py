# Segmentation demo: Semantic FPN + EfficientViT-M0 trained from scratch on the CPU on the synthetic shapes
# dataset in the ADE20K layout (data/ade_demo/ADEChallengeData2016, tools/make_demo_data.py ade20k ...).
# 5 classes (background + 4 shapes) after reduce_zero_label; IoUMetric reports mIoU, mAcc, aAcc.
#   python tools/make_demo_data.py ade20k data/ade_demo/ADEChallengeData2016
#   python tools/train.py configs/demo/fpn_evit_m0_ade20k_demo.py --work-dir work_dirs/seg_demo
_base_ = ['../fpn_evit_m4_ade20k.py']

data_root = 'data/ade_demo/ADEChallengeData2016'
classes = ('background', 'circle', 'square', 'triangle', 'star')
metainfo = dict(classes=classes, palette=[[0, 0, 0], [220, 20, 60], [0, 160, 0], [0, 80, 220], [230, 190, 0]])
crop_size = (192, 192)
max_iters = 600

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='m0', init_cfg=None),
    neck=dict(in_channels=[64, 128, 192], out_channels=64),
    decode_head=dict(in_channels=[64] * 5, channels=64, num_classes=len(classes), norm_cfg=dict(type='BN')))

dataset = dict(type='BaseSegDataset', data_root=data_root, metainfo=metainfo, reduce_zero_label=True,
               img_suffix='.jpg', seg_map_suffix='.png')
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 192), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 192), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=1,
    dataset=dict(_delete_=True, **dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training', seg_map_path='annotations/training')))
val_dataloader = dict(
    batch_size=1, num_workers=1,
    dataset=dict(_delete_=True, **dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation')))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.01))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', power=0.9, begin=100, end=max_iters, eta_min=1e-5, by_epoch=False),
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
default_hooks = dict(
    logger=dict(interval=20, log_metric_by_epoch=False),
    checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1),
    visualization=dict(draw=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))

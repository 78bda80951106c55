# The demo job (`make demo`): RetinaNet + EfficientViT-M0 trained from scratch on the CPU on the synthetic
# shapes dataset in COCO format (data/coco_demo, written by tools/make_demo_data.py). Small images (256x256),
# a light head (128 channels, 2 convs), AdamW 2e-3 with warm-up and cosine decay; evaluated with CocoMetric.
_base_ = ['../retinanet_evit_m0.py']

data_root = 'data/coco_demo/'
classes = ('circle', 'square', 'triangle', 'star')
metainfo = dict(classes=classes)
image_size = (256, 256)
max_epochs = 12

model = dict(
    data_preprocessor=dict(pad_size_divisor=64),
    backbone=dict(init_cfg=None, norm_eval=False),  # from scratch: BatchNorm must learn its statistics
    neck=dict(out_channels=128),
    bbox_head=dict(num_classes=len(classes), in_channels=128, feat_channels=128, stacked_convs=2),
    test_cfg=dict(nms_pre=300, score_thr=0.05, max_per_img=50))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8, num_workers=1, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
                 ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/')))
val_dataloader = dict(
    batch_size=8, num_workers=1, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline,
                 ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=100),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True, begin=0, end=max_epochs),
]
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.05), clip_grad=dict(max_norm=10.0))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
    visualization=dict(draw=False))
log_processor = dict(window_size=10)
env_cfg = dict(dist_cfg=dict(backend='gloo'))

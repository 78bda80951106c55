# Instance segmentation demo: Mask R-CNN + EfficientViT-M0 trained from scratch on the CPU on the synthetic shapes
# dataset in COCO format (data/coco_demo, boxes and polygon masks, written by tools/make_demo_data.py), evaluated
# with COCO's box and mask AP. The Mask R-CNN recipe (mask_rcnn_evit_m4.py) with the M0 backbone, 256x256 images,
# a 128-channel neck and AdamW 2e-3 with warm-up and cosine decay, as in the RetinaNet demo. The end-to-end tests
# train, evaluate and deploy it on a few images (tests/test_detection_e2e.py). Measured (2 CPU cores, 35.7 min):
# mask AP 0.866, bbox AP 0.887 (README.md).
_base_ = ['../mask_rcnn_evit_m4.py']

data_root = 'data/coco_demo/'
classes = ('circle', 'square', 'triangle', 'star')
metainfo = dict(classes=classes)
image_size = (256, 256)
max_epochs = 12

model = dict(
    data_preprocessor=dict(pad_size_divisor=64),
    backbone=dict(arch='m0', init_cfg=None, norm_eval=False),  # from scratch: BatchNorm must learn its statistics
    neck=dict(in_channels=[64, 128, 192], out_channels=128),
    rpn_head=dict(in_channels=128, feat_channels=128),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=128),
        bbox_head=dict(in_channels=128, fc_out_channels=256, num_classes=len(classes)),
        mask_roi_extractor=dict(out_channels=128),
        mask_head=dict(in_channels=128, conv_out_channels=128, num_classes=len(classes))),
    # 128 sampled RoIs per image instead of 512: fewer RoIs through the box and mask heads per step on 2 CPU cores
    # (the measured demo run used 128)
    train_cfg=dict(rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=300, max_per_img=300), rcnn=dict(max_per_img=50)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
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
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json', metric=['bbox', 'segm'])
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

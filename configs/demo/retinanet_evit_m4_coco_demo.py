# RetinaNet-EfficientViT-M4 with the COCO config's model (configs/retinanet_evit_m4.py: 256-channel head with four
# convs, 80 classes) trained briefly from scratch on the CPU on the synthetic shapes data (data/coco_demo, `make demo`
# writes it), so that timing the whole prediction runs on trained weights: a trained detector passes realistic
# numbers of candidates to NMS, where an initialised one passes almost none. The four shapes are the first four of
# the 80 classes; the other 76 never occur, so this model is for timing, not for COCO evaluation (none is run).
#   python tools/train.py configs/demo/retinanet_evit_m4_coco_demo.py --work-dir work_dirs/demo_m4
#   python tools/benchmark.py configs/baselines/retinanet_r50_fpn_coco.py configs/retinanet_evit_m4.py@deploy \
#       --checkpoint configs/retinanet_evit_m4.py=work_dirs/demo_m4/epoch_3.pth --modes predict --shape 800x1333
_base_ = ['../retinanet_evit_m4.py']

data_root = 'data/coco_demo/'
shapes = ('circle', 'square', 'triangle', 'star')
metainfo = dict(classes=shapes + tuple(f'unused_{i}' for i in range(80 - len(shapes))))
image_size = (256, 256)
max_epochs = 3

model = dict(
    data_preprocessor=dict(pad_size_divisor=64),
    backbone=dict(init_cfg=None, norm_eval=False))  # from scratch: BatchNorm must learn its statistics

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=8, num_workers=1, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
                 ann_file='annotations/instances_train2017.json', data_prefix=dict(img='train2017/')))
# the COCO config's test pipeline (1333x800) on the demo's validation images, for `--modes pipeline`
test_dataloader = dict(dataset=dict(data_root=data_root, metainfo=metainfo,
                                    ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/')))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')

# no evaluation while training: 76 of the classes are placeholders
train_cfg = dict(max_epochs=max_epochs, val_interval=max_epochs)
val_cfg = None
val_dataloader = None
val_evaluator = None
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True, begin=0, end=max_epochs),
]
optim_wrapper = dict(optimizer=dict(lr=2e-3, weight_decay=0.05), clip_grad=dict(max_norm=10.0))
default_hooks = dict(
    logger=dict(interval=10),
    checkpoint=dict(interval=max_epochs, max_keep_ckpts=1),
    visualization=dict(draw=False))
log_processor = dict(window_size=10)
env_cfg = dict(dist_cfg=dict(backend='gloo'))

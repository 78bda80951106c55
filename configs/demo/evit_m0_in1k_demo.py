# Classification demo: EfficientViT-M0 trained from scratch on the CPU on the synthetic shapes dataset in the
# ImageNet folder layout (data/imagenet_demo/{train,val}/<class>/*.JPEG, 4 classes, 96x96 images):
#   python tools/make_demo_data.py imagenet data/imagenet_demo
#   python tools/train.py configs/demo/evit_m0_in1k_demo.py --work-dir work_dirs/cls_demo
# The official recipe's components at demo scale: AdamW, warm-up + cosine, AGC, EMA (faster, for few steps),
# repeated augmentation, RandAugment, label smoothing; mixup/cutmix off (4 classes, a few hundred steps).
_base_ = ['../evit_m4_in1k.py']

arch = 'm0'
num_classes = 4
data_root = 'data/imagenet_demo/'
epochs = 60
model = dict(
    backbone=dict(arch=arch),
    num_classes=num_classes,
    data_preprocessor=dict(num_classes=num_classes, mixup=None))
train_transform = dict(is_training=True, input_size=96, auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4,
                       interpolation='bicubic', re_prob=0.25, re_mode='pixel', hflip=0.5)
test_transform = dict(is_training=False, input_size=96, interpolation='bicubic', crop_pct=1.0)
train_dataloader = dict(
    batch_size=32, num_workers=1, pin_memory=False,
    dataset=dict(data_root=data_root + 'train', transform=train_transform))
val_dataloader = dict(
    batch_size=32, num_workers=1, pin_memory=False,
    dataset=dict(data_root=data_root + 'val', transform=test_transform))
test_dataloader = val_dataloader
val_evaluator = dict(topk=(1, 2))
test_evaluator = val_evaluator
optim_wrapper = dict(optimizer=dict(lr=4e-3))
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=True, begin=0, end=1, convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - 1, eta_min=1e-5, by_epoch=True, begin=1, end=epochs,
         convert_to_iter_based=True),
]
train_cfg = dict(max_epochs=epochs, val_interval=epochs)
custom_hooks = [dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=0.02, update_buffers=True,
                     priority='ABOVE_NORMAL')]
default_hooks = dict(logger=dict(interval=5), checkpoint=dict(interval=epochs, max_keep_ckpts=1))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
auto_scale_lr = dict(base_batch_size=32)

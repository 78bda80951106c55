# EfficientViT-M4 classifier on ImageNet-1k, the official recipe (PAPER: top-1 74.3 / top-5 91.8 at 224):
# 300 epochs + 10 cool-down epochs at the minimum lr, 8 GPUs x 256 images, AdamW with lr 1e-3 x total_batch/512
# (= 4e-3 at 2048; --auto-scale-lr rescales it for other batch sizes), weight decay 0.025 (none on norms, biases
# and attention-bias tables), cosine schedule with 5 warm-up epochs from 1e-6 and minimum 1e-5, adaptive gradient
# clipping 0.02, model EMA (evaluated with the EMA weights), repeated augmentation (3x), RandAugment
# rand-m9-mstd0.5-inc1, colour jitter 0.4, bicubic, random erasing 0.25, mixup 0.8, cutmix 1.0, label smoothing 0.1.
# Data: data/imagenet/{train,val}/<class>/*.JPEG. Windows (7, 7, 4): the official classifier's geometry at 224.
# Test official or timm weights directly:  python tools/test.py configs/evit_m4_in1k.py efficientvit_m4.pth
custom_imports = dict(imports=['evit_mm'], allow_failed_imports=False)
default_scope = 'evit_mm'

arch = 'm4'
num_classes = 1000
data_root = 'data/imagenet/'
batch_size = 256  # per GPU
epochs = 300
cooldown_epochs = 10
warmup_epochs = 5
base_lr = 1e-3 * batch_size * 8 / 512

model = dict(
    type='EfficientViTClassifier',
    backbone=dict(type='EfficientViT', arch=arch, window_size=(7, 7, 4)),
    num_classes=num_classes,
    distillation=False,
    data_preprocessor=dict(
        type='ClsDataPreprocessor', num_classes=num_classes,
        mixup=dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch',
                   label_smoothing=0.1)))

train_transform = dict(is_training=True, input_size=224, auto_augment='rand-m9-mstd0.5-inc1', color_jitter=0.4,
                       interpolation='bicubic', re_prob=0.25, re_mode='pixel', re_count=1)
test_transform = dict(is_training=False, input_size=224, interpolation='bicubic', crop_pct=0.875)
train_dataloader = dict(
    batch_size=batch_size, num_workers=8, persistent_workers=True, pin_memory=True, drop_last=True,
    sampler=dict(type='RepeatAugSampler', shuffle=True, num_repeats=3),
    dataset=dict(type='ImageFolderDataset', data_root=data_root + 'train', transform=train_transform))
val_dataloader = dict(
    batch_size=batch_size, num_workers=8, persistent_workers=True, pin_memory=True,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='ImageFolderDataset', data_root=data_root + 'val', transform=test_transform))
test_dataloader = val_dataloader
val_evaluator = dict(type='TopKAccuracy', topk=(1, 5))
test_evaluator = val_evaluator

optim_wrapper = dict(
    type='AGCOptimWrapper', agc_clip_factor=0.02,
    optimizer=dict(type='AdamW', lr=base_lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.025),
    constructor='PlainDictOptimWrapperConstructor',  # param groups torch.compile can trace (compile=True)
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0,
                       custom_keys={'attention_biases': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6 / base_lr, by_epoch=True, begin=0, end=warmup_epochs,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=epochs - warmup_epochs, eta_min=1e-5, by_epoch=True,
         begin=warmup_epochs, end=epochs, convert_to_iter_based=True),
    # epochs 300-310: cool-down at the minimum learning rate (the cosine schedule leaves it at eta_min)
]
auto_scale_lr = dict(enable=False, base_batch_size=batch_size * 8)

train_cfg = dict(by_epoch=True, max_epochs=epochs + cooldown_epochs, val_interval=1)
val_cfg = dict()
test_cfg = dict()

custom_hooks = [dict(type='EMAHook', ema_type='ExponentialMovingAverage', momentum=4e-5, update_buffers=True,
                     priority='ABOVE_NORMAL')]  # momentum 4e-5 = timm's ModelEmaV2 decay 0.99996
default_hooks = dict(
    timer=dict(type='IterTimerHook'),
    logger=dict(type='LoggerHook', interval=100),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=3, save_best='accuracy/top1', rule='greater'),
    sampler_seed=dict(type='DistSamplerSeedHook'))
env_cfg = dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='nccl'))
log_processor = dict(window_size=50, by_epoch=True)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)

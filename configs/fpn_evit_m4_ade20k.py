# Semantic FPN + EfficientViT-M4 on ADE20K (150 classes), 512x512 crops.
# Recipe: the one mmseg uses for PoolFormer-S12 and PVT with Semantic FPN (fpn_poolformer_s12_8xb4-40k), so that
# numbers are comparable with those efficient backbones: 40k iterations, 32 images per step (8 GPUs x 4), AdamW
# lr 2e-4, weight decay 1e-4 (none on attention-bias tables), poly decay (power 0.9). ResNet-50's Semantic FPN
# (fpn_r50_4xb4-160k: SGD, 160k iterations) is the other reference; this short AdamW schedule suits a
# transformer-style backbone initialised from ImageNet weights (the official M4 release).
# Neck: EfficientViTFPN turns strides 16/32/64 into 4/8/16/32/64 (two 2x2 transposed convs + 3x3), as for Mask R-CNN.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
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
        _delete_=True,
        type='EfficientViTFPN',
        in_channels=[128, 256, 384],
        out_channels=256,
        num_outs=5,  # strides 4, 8, 16, 32, 64
        num_extra_trans_convs=2),
    decode_head=dict(
        in_channels=[256, 256, 256, 256, 256],
        in_index=[0, 1, 2, 3, 4],
        feature_strides=[4, 8, 16, 32, 64],
        num_classes=150,
        # mmseg's CrossEntropyLoss, same values, reading the channels-last logits without a copy (3x faster)
        loss_decode=dict(type='ChannelsLastCrossEntropyLoss')))

train_dataloader = dict(batch_size=4, num_workers=4)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=2e-4, weight_decay=1e-4),
    constructor='PlainDictOptimWrapperConstructor',  # param groups torch.compile can trace (compile=True)
    paramwise_cfg=dict(custom_keys={'attention_biases': dict(decay_mult=0.0)}))
param_scheduler = [dict(type='PolyLR', power=0.9, begin=0, end=40000, eta_min=0.0, by_epoch=False)]
auto_scale_lr = dict(enable=False, base_batch_size=32)

# Mask R-CNN + EfficientViT-M4 + EfficientViTFPN on COCO 2017, the official EfficientViT recipe: 1x schedule
# (12 epochs, lr steps at 8 and 11, 500-iteration linear warm-up), AdamW lr 1e-4, weight decay 0.05 (none on the
# attention-bias tables), 1333x800, 16 images per step, backbone from the official ImageNet-1k M4 weights.
# The neck adds two 2x2 transposed convs, each followed by a 3x3 conv, for the stride-8 and stride-4 levels.
# Official result: mask AP 31.0 / AP50 51.2 / AP75 32.2; the official COCO weights
# (mask_rcnn_efficientvit_m4_fpn_1x_coco.pth) load as they are: tools/test.py configs/mask_rcnn_evit_m4.py FILE_OR_URL.
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['evit_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='EfficientViT',
        arch='m4',
        out_indices=(0, 1, 2),
        frozen_stages=-1,
        norm_eval=True,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
                       'efficientvit_m4.pth')),
    neck=dict(
        _delete_=True,
        type='EfficientViTFPN',
        in_channels=[128, 256, 384],
        out_channels=256,
        num_outs=5,  # strides 4, 8 (transposed convs), 16, 32, 64
        num_extra_trans_convs=2))

train_dataloader = dict(batch_size=2, num_workers=2)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='PlainDictOptimWrapperConstructor',  # param groups torch.compile can trace (compile=True)
    paramwise_cfg=dict(custom_keys={'attention_biases': dict(decay_mult=0.0)}))

auto_scale_lr = dict(enable=False, base_batch_size=16)

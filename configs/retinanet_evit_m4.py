# RetinaNet + EfficientViT-M4 + EfficientViTFPN on COCO 2017, the official EfficientViT recipe:
# 1x schedule (12 epochs, lr steps at 8 and 11, linear warm-up over 500 iterations), AdamW lr 1e-4 with weight
# decay 0.05 (none on the attention-bias tables), 1333x800, 16 images per step (8 GPUs x 2), backbone from the
# official ImageNet-1k M4 weights. Official result: box AP 32.7 / AP50 52.2 / AP75 34.1; the official COCO weights
# (retinanet_efficientvit_m4_fpn_1x_coco.pth) load as they are: tools/test.py configs/retinanet_evit_m4.py FILE_OR_URL.
# Local weights: --cfg-options model.backbone.init_cfg.checkpoint=/path/to/efficientvit_m4.pth
# timm's weights: --cfg-options model.backbone.init_cfg.checkpoint=hf-hub:timm/efficientvit_m4.r224_in1k
# Other batch sizes: tools/train.py ... --auto-scale-lr (linear scaling from 16 images per step).
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
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
        norm_eval=True,  # 2 images per GPU: keep the ImageNet BatchNorm statistics
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://github.com/xinyuliu-jeffrey/EfficientViT_Model_Zoo/releases/download/v1.0/'
                       'efficientvit_m4.pth')),
    neck=dict(
        _delete_=True,
        type='EfficientViTFPN',
        in_channels=[128, 256, 384],
        out_channels=256,
        start_level=0,
        add_extra_convs='on_input',
        num_outs=5,  # strides 8 (transposed conv), 16, 32, 64, 128 (extra conv)
        num_extra_trans_convs=1))

train_dataloader = dict(batch_size=2, num_workers=2)

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    constructor='PlainDictOptimWrapperConstructor',  # param groups torch.compile can trace (compile=True)
    paramwise_cfg=dict(custom_keys={'attention_biases': dict(decay_mult=0.0)}))

auto_scale_lr = dict(enable=False, base_batch_size=16)

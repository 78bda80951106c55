# EfficientViT-M3 classifier on ImageNet-1k: the official recipe of evit_m4_in1k.py with the M3 arch.
_base_ = ['./evit_m4_in1k.py']

model = dict(backbone=dict(arch='m3'))

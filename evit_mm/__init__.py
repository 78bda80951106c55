"""evit_mm: EfficientViT (Liu et al., CVPR 2023) as an OpenMMLab 2.0 backbone."""
__version__ = "0.1.0"

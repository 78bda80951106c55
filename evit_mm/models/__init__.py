"""Models registered by evit_mm."""
from .backbones import EfficientViT
from .necks import EfficientViTFPN

__all__ = ['EfficientViT', 'EfficientViTFPN']

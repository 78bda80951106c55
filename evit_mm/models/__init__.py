"""Models registered by evit_mm."""
from .backbones import EfficientViT

__all__ = ['EfficientViT']

"""Models registered by evit_mm."""
from .backbones import EfficientViT
from .classifier import ClsDataPreprocessor, EfficientViTClassifier
from .necks import EfficientViTFPN

__all__ = ['ClsDataPreprocessor', 'EfficientViT', 'EfficientViTClassifier', 'EfficientViTFPN']

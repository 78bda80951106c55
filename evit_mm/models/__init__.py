"""Models registered by evit_mm."""
from .backbones import EfficientViT
from .classifier import ClsDataPreprocessor, EfficientViTClassifier
from .losses import ChannelsLastCrossEntropyLoss
from .necks import EfficientViTFPN

__all__ = ['ChannelsLastCrossEntropyLoss', 'ClsDataPreprocessor', 'EfficientViT', 'EfficientViTClassifier',
           'EfficientViTFPN']

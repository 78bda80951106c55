from .efficientvit import ARCH_SETTINGS, CLASSIFICATION_WINDOWS, ArchSpec, EfficientViT
from .image_checks import ImageInputError

__all__ = ['ARCH_SETTINGS', 'CLASSIFICATION_WINDOWS', 'ArchSpec', 'EfficientViT', 'ImageInputError']

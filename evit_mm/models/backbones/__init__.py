from .efficientvit import ARCH_SETTINGS, CLASSIFICATION_WINDOWS, ArchSpec, EfficientViT, ImageInputError

__all__ = ['ARCH_SETTINGS', 'CLASSIFICATION_WINDOWS', 'ArchSpec', 'EfficientViT', 'ImageInputError']

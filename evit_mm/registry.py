"""evit_mm's registry scope.

Modules are registered twice: in mmengine's root ``MODELS`` (so ``type='EfficientViT'`` resolves from the mmdet,
mmseg and mmpretrain scopes, whose registries are its children) and in this ``evit_mm`` child registry (so
``type='evit_mm.EfficientViT'`` resolves from anywhere). mmengine imports this module to resolve the prefix.
"""
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='evit_mm', locations=['evit_mm.models'])


def register_model(cls: type) -> type:
    """Class decorator registering ``cls`` in mmengine's root registry and in the ``evit_mm`` scope."""
    MMENGINE_MODELS.register_module(module=cls)
    MODELS.register_module(module=cls)
    return cls

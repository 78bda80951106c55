"""evit_mm's registry scope.

Modules are registered twice: in mmengine's root ``MODELS`` (so ``type='EfficientViT'`` resolves from the mmdet,
mmseg and mmpretrain scopes, whose registries are its children) and in this ``evit_mm`` child registry (so
``type='evit_mm.EfficientViT'`` resolves from anywhere). mmengine imports this module to resolve the prefix.

Every other root registry of mmengine gets an ``evit_mm`` child too, empty: a run whose config
says ``default_scope = 'evit_mm'`` (ImageNet pretraining) builds its optimizer, hooks, datasets and metrics through
them, finding mmengine's types (and evit_mm's, registered at the root) in the parent. Without them mmengine warned
for each registry that it "Failed to search registry with scope evit_mm" and fell back to the root.
"""
import mmengine.registry as mmengine_registry
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import Registry

SCOPE = 'evit_mm'
MODELS = Registry('model', parent=MMENGINE_MODELS, scope=SCOPE, locations=['evit_mm.models'])

# mmengine's other root registries, whichever its version defines, get their evit_mm children here (each parent
# keeps its child)
for _root in [value for value in vars(mmengine_registry).values() if isinstance(value, Registry)
              and value.parent is None and value is not MMENGINE_MODELS]:
    Registry(_root.name, parent=_root, scope=SCOPE)


def register_model(cls: type) -> type:
    """Class decorator registering ``cls`` in mmengine's root registry and in the ``evit_mm`` scope."""
    MMENGINE_MODELS.register_module(module=cls)
    MODELS.register_module(module=cls)
    return cls

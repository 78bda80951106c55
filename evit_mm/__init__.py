"""evit_mm: EfficientViT (Liu et al., CVPR 2023) as an OpenMMLab 2.0 backbone for mmdet and mmseg.

Importing the package registers its modules (``type='EfficientViT'`` from the mmdet and mmseg scopes,
``type='evit_mm.EfficientViT'`` anywhere; the classifier, dataset, metric, sampler, optimizer wrapper and
constructor, and the neck and the segmentation loss where mmdet and mmseg are installed: see :mod:`evit_mm.models`)
and makes mmengine's training checkpoints loadable with torch's safe ``weights_only`` loader (see
:mod:`evit_mm.compat.safe_checkpoints`).
Nothing else happens on import.
"""
from . import engine, evaluation, models  # noqa: F401  (registration)
from .compat import safe_checkpoints as _safe_checkpoints
from .data import imagenet  # noqa: F401  (registration)
from .models import EfficientViT, EfficientViTClassifier

__version__ = '0.1.0'
__all__ = ['EfficientViT', 'EfficientViTClassifier', '__version__']
if 'EfficientViTFPN' in models.__all__:
    __all__.append('EfficientViTFPN')

_safe_checkpoints.install()


def __getattr__(name: str) -> type:
    """``evit_mm.EfficientViTFPN``: the neck where mmdet is installed, else an ``ImportError`` naming mmdet."""
    if name == 'EfficientViTFPN':
        return models.EfficientViTFPN
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

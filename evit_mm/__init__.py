"""evit_mm: EfficientViT (Liu et al., CVPR 2023) as an OpenMMLab 2.0 backbone for mmdet and mmseg.

Importing the package registers its modules (``type='EfficientViT'`` from the mmdet and mmseg scopes,
``type='evit_mm.EfficientViT'`` anywhere; the neck, classifier, dataset, metric, sampler and optimizer wrapper)
and makes mmengine's training checkpoints loadable with torch's safe ``weights_only`` loader (see
:mod:`evit_mm.compat.safe_checkpoints`). Nothing else happens on import.
"""
from . import engine, evaluation  # noqa: F401  (registration)
from .compat import safe_checkpoints as _safe_checkpoints
from .data import imagenet  # noqa: F401  (registration)
from .models import EfficientViT, EfficientViTClassifier, EfficientViTFPN

__version__ = '0.1.0'
__all__ = ['EfficientViT', 'EfficientViTClassifier', 'EfficientViTFPN', '__version__']

_safe_checkpoints.install()

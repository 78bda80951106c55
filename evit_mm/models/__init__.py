"""Models registered by evit_mm.

The backbone and the classifier need mmengine and mmcv only. The neck builds on mmdet's FPN and the segmentation loss
on mmseg's cross-entropy: each is imported, and so registered, where its package is installed, so an environment
that holds only one of mmdet and mmseg (``pip install --no-deps -e .`` into an existing mmseg setup) imports
evit_mm. A model whose package is missing is registered as a builder that raises an ``ImportError`` naming the
package (a config asking for it would otherwise get mmengine's "not in the registry"), and reading it from the
module raises the same error.
"""
from __future__ import annotations

import importlib
from importlib.util import find_spec
from typing import Any, Callable, NoReturn

from ..registry import register_model
from .backbones import EfficientViT
from .classifier import ClsDataPreprocessor, EfficientViTClassifier

#: Models that build on a downstream package: name -> (the package, its pip requirement, the submodule defining it).
MODELS_NEEDING_PACKAGES = {
    'EfficientViTFPN': ('mmdet', 'mmdet>=3.0,<3.4', '.necks'),
    'InstanceSegTTAModel': ('mmdet', 'mmdet>=3.0,<3.4', '.instance_seg_tta'),
    'ChannelsLastCrossEntropyLoss': ('mmseg', 'mmsegmentation>=1.0,<1.3', '.losses'),
}

__all__ = ['ClsDataPreprocessor', 'EfficientViT', 'EfficientViTClassifier']


def _missing_package_error(name: str) -> ImportError:
    package, requirement, _ = MODELS_NEEDING_PACKAGES[name]
    return ImportError(f'evit_mm.{name} builds on {package}, which is not installed in this environment: '
                       f"pip install '{requirement}'")


def _unavailable_model(name: str) -> Callable[..., NoReturn]:
    """A registry entry for ``name`` that raises :func:`_missing_package_error` when a config builds it."""
    def build(*args: Any, **kwargs: Any) -> NoReturn:
        raise _missing_package_error(name)
    build.__name__ = build.__qualname__ = name
    return build


for _name, (_package, _requirement, _submodule) in MODELS_NEEDING_PACKAGES.items():
    # find_spec, not a caught ImportError: an installed package that fails to import (a broken mmcv) must say so
    if find_spec(_package) is not None:
        globals()[_name] = getattr(importlib.import_module(_submodule, __name__), _name)
        __all__.append(_name)
    else:
        register_model(_unavailable_model(_name))


def __getattr__(name: str) -> type:
    """Names the package a model needs where it is missing (module ``__getattr__``, PEP 562)."""
    if name in MODELS_NEEDING_PACKAGES:
        raise _missing_package_error(name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')

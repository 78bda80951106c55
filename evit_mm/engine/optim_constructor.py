"""mmengine's optimizer-wrapper constructor with the optimizer's parameter groups as plain dicts, so that
``torch.compile`` (mmengine's ``compile=True``) can trace the optimizer step."""
from __future__ import annotations

from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class PlainDictOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor``, the same groups, options and log lines, with plain ``dict`` groups.

    Why: with ``paramwise_cfg`` (evit_mm's configs keep weight decay off the attention-bias tables), mmengine 0.10
    puts its per-parameter groups into the optimizer's config, which turns each into a ``ConfigDict``, and torch keeps
    them as ``optimizer.param_groups``. Dynamo cannot trace an optimizer step over such groups (torch 2.14:
    ``InternalTorchDynamoError: 'UserDefinedDictVariable' object has no attribute 'items'``), so a run with
    ``compile=True`` stopped in its first iteration. Plain dicts with the same keys and values trace.
    """

    def __call__(self, model: nn.Module) -> OptimWrapper:
        optim_wrapper = super().__call__(model)
        groups = optim_wrapper.optimizer.param_groups
        groups[:] = [dict(group) for group in groups]  # before any step: no optimizer state refers to them yet
        return optim_wrapper

"""Adaptive gradient clipping (Brock et al., 2021), as the official EfficientViT recipe trains with
(``--clip-grad 0.02 --clip-mode agc``), through timm's implementation inside an mmengine optimizer wrapper."""
from __future__ import annotations

from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from timm.utils import adaptive_clip_grad


@OPTIM_WRAPPERS.register_module()
class AGCOptimWrapper(OptimWrapper):
    """``OptimWrapper`` that clips each parameter's gradient relative to its norm before every step.

    Args:
        agc_clip_factor: Maximum ratio of gradient norm to parameter norm (unit-wise). Defaults to 0.02.
        agc_eps: Floor of the parameter norm. Defaults to 1e-3.
        **kwargs: Passed to ``OptimWrapper``.
    """

    def __init__(self, *args, agc_clip_factor: float = 0.02, agc_eps: float = 1e-3, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.agc_clip_factor = agc_clip_factor
        self.agc_eps = agc_eps

    def step(self, **kwargs) -> None:
        params = [p for group in self.optimizer.param_groups for p in group['params'] if p.grad is not None]
        adaptive_clip_grad(params, clip_factor=self.agc_clip_factor, eps=self.agc_eps)
        super().step(**kwargs)

"""A model in tensor mode (backbone + neck + head, no pre/post-processing) as a plain ``nn.Module(x)``."""
from __future__ import annotations

import torch
from torch import nn

from .inputs import synthetic_batch
from .targets import Target


class TensorMode(nn.Module):
    """``model(x, samples, mode='tensor')``, with test-time metadata for ``x``'s size where the model reads it (a
    two-stage detector's proposals); other models get none, so that nothing fixes the size of an exported graph."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.model = target.model
        self.kind = target.kind
        self.needs_samples = target.kind == 'detector' and getattr(target.model, 'with_rpn', False)

    def forward(self, x: torch.Tensor):
        if self.kind == 'backbone':
            return self.model(x)
        if not self.needs_samples:
            return self.model(x, None, mode='tensor')
        batch, _, height, width = (int(size) for size in x.shape)  # plain ints also while traced (FLOPs, ONNX)
        samples = synthetic_batch(self.kind, batch, height, width, with_images=False)['data_samples']
        return self.model(x, samples, mode='tensor')

"""A model in tensor mode (backbone + neck + head, no pre/post-processing) as a plain ``nn.Module(x)``."""
from __future__ import annotations

import torch
from torch import nn

from .inputs import synthetic_batch
from .targets import Target


class TensorMode(nn.Module):
    """``model(x, samples, mode='tensor')`` with test-time metadata for ``x``'s size (two-stage detectors need
    it for their proposals); ``samples`` are rebuilt when the input size changes."""

    def __init__(self, target: Target) -> None:
        super().__init__()
        self.model = target.model
        self.kind = target.kind

    def forward(self, x: torch.Tensor):
        if self.kind == 'backbone':
            return self.model(x)
        if self.kind == 'classifier':
            return self.model(x, None, mode='tensor')
        batch, _, height, width = (int(size) for size in x.shape)  # plain ints also while traced (FLOPs, ONNX)
        samples = synthetic_batch(self.kind, batch, height, width, with_images=False)['data_samples']
        return self.model(x, samples, mode='tensor')

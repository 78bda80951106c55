"""Models whose outputs are nested tuples, lists or dicts of tensors, seen as one flat tuple (the form ONNX and
exported programs give their outputs in)."""
from __future__ import annotations

import torch
from torch import nn


def flatten_outputs(outputs) -> list[torch.Tensor]:
    """The tensors of a model's output (a tensor, or nested tuples/lists/dicts of them), in order."""
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    flat: list[torch.Tensor] = []
    for item in outputs:
        flat += flatten_outputs(item)
    return flat


class FlatOutputs(nn.Module):
    """Wraps a module so that it returns a flat tuple of tensors (nested tuples/lists become one tuple)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten_outputs(self.module(x)))

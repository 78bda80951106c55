"""ONNX export with dynamic batch, height and width, and a numerical check with ONNX Runtime."""
from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

#: The TorchScript exporter, which takes ``dynamic_axes``: torch >= 2.5 has a second (dynamo) exporter and a flag to
#: choose, older torch has this one only
TORCHSCRIPT_EXPORTER = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}


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


class _FlatOutputs(nn.Module):
    """Wraps a module so that it returns a flat tuple of tensors (nested tuples/lists become one tuple)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(flatten_outputs(self.module(x)))


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, opset: int = 17,
                dynamic_hw: bool = True) -> list[str]:
    """Export ``model(x)`` to ONNX with dynamic batch (and height and width unless ``dynamic_hw=False``),
    with the TorchScript-based exporter.

    Returns:
        The output names, one per tensor of the flattened output.
    """
    wrapped = _FlatOutputs(model).eval()
    with torch.no_grad():
        count = len(wrapped(example))
    names = [f'output_{i}' for i in range(count)]
    dynamic = {'input': {0: 'batch', 2: 'height', 3: 'width'} if dynamic_hw else {0: 'batch'}}
    dynamic.update({name: {0: 'batch'} for name in names})
    with warnings.catch_warnings():
        # evit_mm's own Python decisions on shapes are input checks and choices between equal computations, which
        # the trace may fix at the example's size; other libraries' warnings stay (check_onnx runs the graph at
        # other sizes, as tools/export_onnx.py does)
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning, module=r'evit_mm\.')
        torch.onnx.export(wrapped, (example,), os.fspath(path), input_names=['input'], output_names=names,
                          dynamic_axes=dynamic, opset_version=opset, **TORCHSCRIPT_EXPORTER)
    return names


def check_onnx(path: str | os.PathLike, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[float]:
    """Largest absolute difference between ONNX Runtime and PyTorch outputs, per input (any sizes)."""
    import onnxruntime as ort
    session = ort.InferenceSession(os.fspath(path), providers=['CPUExecutionProvider'])
    wrapped = _FlatOutputs(model).eval()
    errors = []
    for x in inputs:
        with torch.no_grad():
            expected = wrapped(x)
        got = session.run(None, {'input': x.numpy()})
        if len(got) != len(expected):
            raise AssertionError(f'ONNX gives {len(got)} outputs, PyTorch {len(expected)}')
        errors.append(max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)))
    return errors

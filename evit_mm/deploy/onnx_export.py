"""ONNX export with dynamic batch, height and width (torch's TorchScript exporter, or its dynamo exporter on a
``torch.export`` program), and a numerical check with ONNX Runtime."""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from .flat_outputs import FlatOutputs
from .program_export import DYNAMIC_EXPORT_TORCH, INPUT_DIM_NAMES, dynamic_export_available, export_program

#: The TorchScript exporter, which takes ``dynamic_axes``: torch >= 2.5 has a second (dynamo) exporter and a flag to
#: choose, older torch has this one only
TORCHSCRIPT_EXPORTER = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters else {}

#: ``export_onnx``'s exporters: torch's TorchScript-based one (deprecated in torch 2.9+, every supported torch) and its
#: dynamo one, which translates a ``torch.export`` program (torch >= 2.7 with onnxscript)
EXPORTERS = ('torchscript', 'dynamo')

#: The smallest opset each exporter writes by default (the dynamo exporter's own minimum is 18)
DEFAULT_OPSETS = {'torchscript': 17, 'dynamo': 18}

#: The input's dynamic dimensions in the ONNX graph, by index, with their names
INPUT_DIMS = {dim: INPUT_DIM_NAMES[dim] for dim in (0, 2, 3)}


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | os.PathLike, opset: int | None = None,
                dynamic_hw: bool = True, exporter: str = 'torchscript') -> list[str]:
    """Export ``model(x)`` to ONNX with dynamic batch (and height and width unless ``dynamic_hw=False``).

    Args:
        model: A module called as ``model(x)``, its outputs tensors or nested tuples/lists/dicts of them.
        example: An input to trace with.
        path: The ``.onnx`` file to write.
        opset: ONNX opset; default :data:`DEFAULT_OPSETS` of the exporter.
        dynamic_hw: Leave height and width dynamic.
        exporter: One of :data:`EXPORTERS`. ``'dynamo'`` exports the program of :func:`export_program` (which
            checks it at a second size) and needs onnxscript.

    Returns:
        The output names, one per tensor of the flattened output.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f'unknown exporter {exporter!r}; choose one of {", ".join(EXPORTERS)}')
    wrapped = FlatOutputs(model).eval()
    with torch.no_grad():
        count = len(wrapped(example))
    names = [f'output_{i}' for i in range(count)]
    opset = opset or DEFAULT_OPSETS[exporter]
    if exporter == 'dynamo':
        _export_dynamo(wrapped, example, os.fspath(path), names, opset, dynamic_hw)
        return names
    dynamic = {'input': INPUT_DIMS if dynamic_hw else {0: INPUT_DIMS[0]}}
    dynamic.update({name: {0: 'batch'} for name in names})
    with warnings.catch_warnings():
        # evit_mm's own Python decisions on shapes are input checks and choices between equal computations, which
        # the trace may fix at the example's size; other libraries' warnings stay (check_onnx runs the graph at
        # other sizes, as tools/export_onnx.py does)
        warnings.filterwarnings('ignore', category=torch.jit.TracerWarning, module=r'evit_mm\.')
        torch.onnx.export(wrapped, (example,), os.fspath(path), input_names=['input'], output_names=names,
                          dynamic_axes=dynamic, opset_version=opset, **TORCHSCRIPT_EXPORTER)
    return names


def dynamo_exporter_missing() -> str | None:
    """Why torch's dynamo ONNX exporter cannot export :func:`export_program`'s programs here (``'needs torch ...'``),
    or None where it can: the one wording of the refusal for the library and ``tools/export_onnx.py``."""
    onnxscript = importlib.util.find_spec('onnxscript') is not None
    if dynamic_export_available() and onnxscript:
        return None
    return (f'needs torch >= {DYNAMIC_EXPORT_TORCH} and onnxscript (this is torch {torch.__version__}, onnxscript '
            f'{"present" if onnxscript else "missing"})')


def dynamo_exporter_available() -> bool:
    """Whether torch's dynamo ONNX exporter can export :func:`export_program`'s programs here."""
    return dynamo_exporter_missing() is None


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: str, names: list[str], opset: int,
                   dynamic_hw: bool) -> None:
    """The dynamo exporter on :func:`export_program`'s program; the input's symbolic dimensions renamed to
    :data:`INPUT_DIMS` (torch names them after its symbols, ``s77``)."""
    if reason := dynamo_exporter_missing():
        raise RuntimeError(f'the dynamo ONNX exporter {reason}; the TorchScript exporter works with every supported '
                           'torch')
    program = export_program(model, example, dynamic_hw=dynamic_hw)
    torch.onnx.export(program, (example,), path, input_names=['input'], output_names=names, opset_version=opset,
                      dynamo=True, verbose=False)
    _name_input_dims(path)


def _name_input_dims(path: str) -> None:
    """Rename the symbols of the input's dynamic dimensions to :data:`INPUT_DIMS`, wherever they occur."""
    import onnx
    onnx_model = onnx.load(path)
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    renames = {dims[index].dim_param: name for index, name in INPUT_DIMS.items() if dims[index].dim_param}
    for value in (*onnx_model.graph.input, *onnx_model.graph.output, *onnx_model.graph.value_info):
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param:
                dim.dim_param = _renamed(dim.dim_param, renames)
    onnx.save(onnx_model, path)


def _renamed(expression: str, renames: dict[str, str]) -> str:
    """``expression`` (a symbol, or an expression of symbols such as ``((s53 - 1)//16) + 1``) with each symbol
    renamed."""
    return re.sub(r'\b[a-z]\d+\b', lambda match: renames.get(match.group(0), match.group(0)), expression)


def check_onnx(path: str | os.PathLike, model: nn.Module, inputs: Sequence[torch.Tensor]) -> list[float]:
    """Largest absolute difference between ONNX Runtime and PyTorch outputs, per input (any sizes)."""
    import onnxruntime as ort
    session = ort.InferenceSession(os.fspath(path), providers=['CPUExecutionProvider'])
    wrapped = FlatOutputs(model).eval()
    errors = []
    for x in inputs:
        with torch.no_grad():
            expected = wrapped(x)
        got = session.run(None, {'input': x.numpy()})
        if len(got) != len(expected):
            raise AssertionError(f'ONNX gives {len(got)} outputs, PyTorch {len(expected)}')
        errors.append(max(float(np.abs(g - e.numpy()).max()) for g, e in zip(got, expected)))
    return errors

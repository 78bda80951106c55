"""``torch.export`` programs that hold at every batch size and image size: the graph behind torch's dynamo ONNX
exporter, AOTInductor and ExecuTorch."""
from __future__ import annotations

import inspect

import torch
from torch import nn

from .flat_outputs import flatten_outputs

#: The torch that :func:`export_program` needs: ``Dim.DYNAMIC``, deferred runtime assertions, size-oblivious strides.
DYNAMIC_EXPORT_TORCH = '2.7'

#: Names of an image batch's dimensions, by index
INPUT_DIM_NAMES = {0: 'batch', 1: 'channels', 2: 'height', 3: 'width'}


class SizeSpecialisedError(ValueError):
    """The exported program does not reproduce the model at another size: the model fixes sizes in Python."""


def dynamic_export_available() -> bool:
    """Whether this torch exports programs with symbolic sizes as :func:`export_program` asks."""
    export = getattr(torch, 'export', None)
    if export is None or not hasattr(getattr(export, 'Dim', None), 'DYNAMIC'):
        return False
    if 'prefer_deferred_runtime_asserts_over_guards' not in inspect.signature(export.export).parameters:
        return False
    try:
        from torch.fx.experimental import _config as fx_config
    except ImportError:
        return False
    return hasattr(fx_config, 'backed_size_oblivious')


def export_program(model: nn.Module, example: torch.Tensor, dynamic_hw: bool = True,
                   atol: float = 1e-4) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model(x)`` in eval mode with the batch (and height and width unless ``dynamic_hw=False``)
    left symbolic, checked against the model at a second size.

    Two export settings make one program hold at every size for EfficientViT, whose local windows (paper Sec. 3.2)
    pad each map to a multiple of the window:

    - sizes are not specialised at 1 (torch's CPU convolution asks whether the batch is 1 to choose a memory
      layout, and a map one window wide is another case only for torch's stride bookkeeping);
    - facts that torch's symbolic shapes cannot prove (that ``7 * (k + 1)`` rows split into ``k + 1`` windows)
      become checks inside the program instead of guards that fail the export.

    The second setting also keeps quiet where a model computes a size with Python numbers (mmseg's ``Upsample``:
    ``int(h * 2.0)`` becomes the example's size), so the program is run at another batch size and image size and
    compared with the model before it is returned.

    Args:
        model: A module called as ``model(x)``; put in eval mode.
        example: An input ``(B, C, H, W)``; a batch of one is repeated to two for the trace (torch fixes a size
            that is 1 in the example).
        dynamic_hw: Leave height and width symbolic too.
        atol: Largest accepted difference between program and model at the second size.

    Raises:
        RuntimeError: torch older than :data:`DYNAMIC_EXPORT_TORCH` (tested with torch 2.14).
        SizeSpecialisedError: the program differs from the model at the second size, or takes sizes up to a
            bound only (a map of the example is 1 pixel wide).
    """
    if not dynamic_export_available():
        raise RuntimeError(f'exporting with symbolic sizes needs torch >= {DYNAMIC_EXPORT_TORCH} (torch.export.Dim.'
                           f'DYNAMIC, deferred runtime assertions); this is torch {torch.__version__}')
    from torch.export import Dim
    from torch.fx.experimental import _config as fx_config

    model = model.eval()
    batch, channels, height, width = example.shape
    trace_input = example.expand(2, -1, -1, -1).contiguous() if batch == 1 else example
    sizes = {0: Dim('batch', min=1)}
    if dynamic_hw:
        sizes.update({2: Dim.DYNAMIC, 3: Dim.DYNAMIC})
    with torch.no_grad(), fx_config.patch(backed_size_oblivious=True):
        program = torch.export.export(model, (trace_input,), dynamic_shapes=(sizes,),
                                      prefer_deferred_runtime_asserts_over_guards=True)
    ranges = input_size_ranges(program)
    bounded = {dim: bounds for dim, bounds in ranges.items() if bounds[1] is not None}
    if bounded:
        raise SizeSpecialisedError(
            f'the exported program takes {_describe(bounded)} only (traced at {tuple(example.shape)}): one of the '
            'model\'s maps is 1 pixel wide at that size, and torch chooses convolution layouts by that; trace at a '
            'larger size')
    other = [1 if batch > 1 else 3, channels, height, width]
    if dynamic_hw:  # larger (never below the smallest size the program takes), and off the example's windows
        other[2], other[3] = height + 37, width + 19
    difference = program_difference(program, model, torch.randn(other, dtype=example.dtype))
    if difference > atol:
        raise SizeSpecialisedError(
            f'the exported program differs from the model by {difference:.2e} at input {tuple(other)} (traced at '
            f'{tuple(example.shape)}): the model computes a size from the input with Python numbers, which the '
            f'program keeps fixed' + ('; export with fixed height and width (dynamic_hw=False)' if dynamic_hw else ''))
    return program


def input_size_ranges(program: torch.export.ExportedProgram) -> dict[int, tuple[int, int | None]]:
    """The sizes the program takes in each symbolic dimension of its (first) input: ``{dim: (min, max)}``, max None
    where unbounded."""
    name = program.graph_signature.user_inputs[0]
    node = next(node for node in program.graph.nodes if node.name == name)
    ranges = {}
    for dim, size in enumerate(node.meta['val'].shape):
        if isinstance(size, torch.SymInt):
            bounds = program.range_constraints[size.node.expr]
            # torch's integer infinity calls itself finite: only a sympy Integer is a bound
            ranges[dim] = (int(bounds.lower), int(bounds.upper) if bounds.upper.is_Integer else None)
    return ranges


def _describe(ranges: dict[int, tuple[int, int | None]]) -> str:
    """``height 65-128, width 65-128``."""
    return ', '.join(f'{INPUT_DIM_NAMES[dim]} {low}-{high if high is not None else ""}'
                     for dim, (low, high) in ranges.items())


def program_difference(program: torch.export.ExportedProgram, model: nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between the program's outputs and the model's for ``x`` (infinite where the
    outputs differ in number or shape)."""
    with torch.no_grad():
        got, expected = flatten_outputs(program.module()(x)), flatten_outputs(model(x))
    if len(got) != len(expected) or any(g.shape != e.shape for g, e in zip(got, expected)):
        return float('inf')
    return max(float((g - e).abs().max()) for g, e in zip(got, expected))

"""Parameters, and FLOPs (multiply-accumulates) with mmengine's counter plus the one op it misses in EfficientViT."""
from __future__ import annotations

from typing import Any

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.analysis.jit_handles import get_shape


def _baddbmm_flop(inputs: list[Any], outputs: list[Any]) -> int:
    """``baddbmm(bias, a, b)``: b x n x k x m MACs for the batched product (the bias add is not counted,
    as mmengine does not count additions)."""
    batch, n, k = get_shape(inputs[1])
    m = get_shape(inputs[2])[-1]
    return batch * n * k * m


def count_params(module: torch.nn.Module) -> float:
    """Parameters of ``module``, in millions."""
    return sum(p.numel() for p in module.parameters()) / 1e6


def macs_analyzer(module: torch.nn.Module, inputs: tuple) -> FlopAnalyzer:
    """mmengine's counter of ``module(*inputs)`` with ``baddbmm`` counted (evit_mm's attention uses it; mmengine does
    not count it by itself), quiet about the ops and modules it leaves out."""
    analyzer = FlopAnalyzer(module, inputs).set_op_handle('aten::baddbmm', _baddbmm_flop)
    analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings('none')
    return analyzer


def count_macs(module: torch.nn.Module, inputs: tuple) -> int:
    """Total MACs of ``module(*inputs)`` (:func:`macs_analyzer`)."""
    return int(macs_analyzer(module, inputs).total())

"""When evit_mm's eager-only kernels step aside: traces, ONNX export and compilation see plain operators."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from evit_mm.compat.torch_api import is_compiling
from evit_mm.deploy.onnx_export import TORCHSCRIPT_EXPORTER
from evit_mm.models import eager_kernels
from evit_mm.models.eager_kernels import eager_conv_dtype, exporting_or_compiling


class _Recorder(nn.Module):
    """Records what :func:`exporting_or_compiling` said during each forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        graph = exporting_or_compiling()
        if not is_compiling():  # dynamo's graph holds no Python list: the output tells it instead
            self.seen.append(graph)
        return x + 1 if graph else x - 1


def test_eager_calls_are_not_exports():
    recorder = _Recorder()
    recorder(torch.zeros(2))
    assert recorder.seen == [False]


def test_jit_trace_and_onnx_export_are_seen():
    recorder = _Recorder()
    torch.jit.trace(recorder, torch.zeros(2), check_trace=False)  # the check reruns the module eagerly
    assert recorder.seen and all(recorder.seen)
    recorder.seen.clear()
    torch.onnx.export(recorder, (torch.zeros(2),), io.BytesIO(), **TORCHSCRIPT_EXPORTER)
    assert recorder.seen and all(recorder.seen)


@pytest.mark.parametrize('flag', ['torchscript', 'dynamo'])
def test_onnx_flags_are_read_where_torch_sets_them(monkeypatch, flag):
    """The direct read of torch's two ONNX-export flags (its public function imports two modules per call) follows
    both; the dynamo exporter needs onnxscript, which the stack does not install, so its flag is set by hand."""
    # torch < 2.6 keeps them elsewhere; eager_kernels then asks torch.onnx.is_in_onnx_export (the other tests)
    _flags = pytest.importorskip('torch.onnx._internal.exporter._flags', reason='torch < 2.6: no such flags')
    GLOBALS = pytest.importorskip('torch.onnx._internal.torchscript_exporter._globals').GLOBALS
    assert not exporting_or_compiling()
    if flag == 'torchscript':
        monkeypatch.setattr(GLOBALS, 'in_onnx_export', True)
    else:
        monkeypatch.setattr(_flags, '_is_onnx_exporting', True)
    assert torch.onnx.is_in_onnx_export() and eager_kernels._in_onnx_export() and exporting_or_compiling()


def test_tracing_is_seen():
    seen = []

    def record(x: torch.Tensor) -> torch.Tensor:
        seen.append(exporting_or_compiling())
        return x + 1

    torch.jit.trace(record, torch.zeros(2), check_trace=False)
    record(torch.zeros(2))
    assert seen == [True, False]


def test_compilation_is_seen():
    recorder = _Recorder()
    compiled = torch.compile(recorder, backend='eager', fullgraph=True)
    assert compiled(torch.zeros(2)).tolist() == [1.0, 1.0] and recorder(torch.zeros(2)).tolist() == [-1.0, -1.0]


@pytest.mark.parametrize('x_dtype, w_dtype, autocast, expected', [
    (torch.float32, torch.float32, None, torch.float32),
    (torch.bfloat16, torch.bfloat16, None, torch.bfloat16),
    (torch.bfloat16, torch.float32, None, None),  # mixed dtypes: the conv itself rejects them
    (torch.float32, torch.float32, torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float32, torch.bfloat16, torch.bfloat16),  # autocast casts any lower float too
    (torch.float64, torch.float64, torch.bfloat16, torch.float64),  # ...but leaves float64 alone
])
def test_the_dtype_a_conv_computes_in(x_dtype, w_dtype, autocast, expected):
    with torch.autocast('cpu', dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        assert eager_conv_dtype(torch.zeros(1, dtype=x_dtype), torch.zeros(1, dtype=w_dtype)) == expected

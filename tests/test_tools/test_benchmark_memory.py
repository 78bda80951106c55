"""The throughput tool's memory columns: the peak one call allocates, measured per target, and the weights' size."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

from evit_mm.benchmark import cli
from evit_mm.benchmark.memory import MIB, call_peak_mb, weights_mb


def _allocations() -> None:
    a = torch.empty(10 * MIB // 4)  # 10 MiB of float32
    b = torch.empty(5 * MIB // 4)
    del a
    c = torch.empty(20 * MIB // 4)  # live with b: the peak, 25 MiB
    del b, c


def test_cpu_call_peak_counts_the_calls_own_tensors_at_their_peak():
    held = torch.empty(50 * MIB // 4)  # allocated before the call: not the call's
    assert call_peak_mb(_allocations, torch.device('cpu')) == pytest.approx(25.0, abs=0.01)
    assert call_peak_mb(lambda: None, torch.device('cpu')) == 0.0
    del held


def test_cpu_call_peak_leaves_stderr_working_and_free_of_the_profilers_lines(capfd):
    held = [torch.empty(MIB)]  # freed by the call but allocated before: the memory profiler warns about it

    def call():
        _allocations()
        held.clear()
    call_peak_mb(call, torch.device('cpu'))
    assert not held
    os.write(2, b'after the measurement\n')
    err = capfd.readouterr().err
    assert err == 'after the measurement\n'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')
def test_cuda_call_peak_excludes_memory_allocated_before():
    device = torch.device('cuda')
    held = torch.empty(50 * MIB // 4, device=device)

    def call():
        a = torch.empty(10 * MIB // 4, device=device)
        b = torch.empty(20 * MIB // 4, device=device)
        del a, b
    assert call_peak_mb(call, device) == pytest.approx(30.0, abs=0.01)
    del held


def test_weights_count_parameters_and_buffers_once():
    tied = nn.Sequential(nn.Linear(256, 256), nn.BatchNorm1d(256))
    tied.append(tied[0])  # the same Linear twice: its weights once
    expected = (256 * 256 + 256 + 2 * 256) * 4 + (2 * 256 * 4 + 8)  # Linear, BatchNorm affine, running stats, count
    assert weights_mb(tied) == pytest.approx(expected / MIB)


def test_each_target_gets_its_own_memory_row(tmp_path):
    """ResNet-50 first, then EfficientViT-M0 at the same size: the second row is the smaller model's own (the
    process's peak resident memory, which the tool reported before, can only grow from row to row)."""
    out = tmp_path / 'r.json'
    assert cli.main(['resnet50', 'evit_m0', '--shape', '128x128', '--batch-size', '2', '--warmup', '1', '--repeats',
                     '2', '--threads', '2', '--json', str(out)]) == 0
    resnet, evit = json.loads(out.read_text())['results']
    assert evit['peak_memory_mb'] < resnet['peak_memory_mb'] / 2
    assert evit['weights_mb'] < resnet['weights_mb'] / 5
    assert resnet['weights_mb'] == pytest.approx(resnet['params_m'] * 1e6 * 4 / MIB, rel=0.01)  # float32

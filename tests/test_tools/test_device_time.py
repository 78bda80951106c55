"""Device busy time against wall time (``tools/benchmark_backbone.py --device-time``): what is counted, on the CPU
here and, with recorded events standing in for a GPU's, on CUDA."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch.autograd import DeviceType

from evit_mm.benchmark import device_time
from evit_mm.benchmark.device_time import DeviceTime, busy_time, device_times, format_device_times
from tests.helpers import REQUIRES_EXACT_OPERATOR_NESTING


@REQUIRES_EXACT_OPERATOR_NESTING
def test_busy_time_counts_top_level_operators_once_and_skips_views():
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    # matmul is one top-level operator (its mm inside is not counted again); view is no task
    busy_ms, tasks = busy_time(lambda: (a @ b).view(-1).relu(), torch.device('cpu'), calls=4)
    assert tasks == 2
    assert busy_ms > 0


def test_busy_time_of_a_training_step_counts_the_backward_operators_too():
    w = torch.randn(32, 32, requires_grad=True)
    x = torch.randn(8, 32)
    forward_only = busy_time(lambda: (x @ w).sum(), torch.device('cpu'), calls=2, grad=True)[1]
    with_backward = busy_time(lambda: (x @ w).sum().backward(), torch.device('cpu'), calls=2, grad=True)[1]
    assert with_backward > forward_only


def test_busy_time_rejects_no_calls():
    with pytest.raises(ValueError, match='calls must be positive'):
        busy_time(lambda: None, torch.device('cpu'), calls=0)


def test_on_a_gpu_busy_time_is_the_device_tasks():
    """Kernels, copies and memsets on the device count (asynchronous ones do not); host events do not."""
    starts = iter(range(0, 10_000, 1000))

    def event(kind, micros, is_async=False, name='volta_sgemm'):
        start = next(starts)
        return SimpleNamespace(device_type=kind, device_time_total=micros, is_async=is_async, name=name,
                               cpu_time_total=micros, cpu_parent=None, thread=1,
                               time_range=SimpleNamespace(start=start, end=start + micros))
    events = [event(DeviceType.CUDA, 30.0), event(DeviceType.CUDA, 12.0, name='Memcpy HtoD'),
              event(DeviceType.CUDA, 99.0, is_async=True), event(DeviceType.CPU, 500.0, name='aten::mm')]
    assert device_time._busy(events, torch.device('cuda')) == (42.0, 2)
    assert device_time._busy(events, torch.device('cpu')) == (500.0, 1)


@REQUIRES_EXACT_OPERATOR_NESTING
def test_device_times_and_their_table():
    a = torch.randn(128, 128)
    times = device_times({'small': lambda: a @ a, 'large': lambda: (a @ a) @ (a @ a)}, torch.device('cpu'),
                         repeats=3, calls=2)
    assert times['small'].tasks == 1 and times['large'].tasks == 3
    assert all(t.wall_ms > 0 and t.busy_ms > 0 for t in times.values())
    table = format_device_times(times, {'large vs small': ('large', 'small'), 'absent': ('large', 'nothing')}, 'demo')
    assert table.splitlines()[0].startswith('| demo |') and '| small |' in table and '| large |' in table
    assert 'large vs small: wall' in table and 'absent' not in table


def test_a_candidate_without_recorded_device_work_gets_no_busy_ratio():
    times = {'ours': DeviceTime(2.0, 0.0, 0), 'timm': DeviceTime(3.0, 1.5, 10)}
    assert format_device_times(times, {'c': ('ours', 'timm')}, 'x').endswith('c: wall 1.50x, busy not recorded')


def test_busy_share():
    assert DeviceTime(wall_ms=10.0, busy_ms=4.0, tasks=3).busy_fraction == pytest.approx(0.4)


def test_device_time_table_compares_both_backbones_and_their_training_steps():
    from evit_mm.benchmark.backbone import device_time_table
    table = device_time_table('m0', (2, 64, 64), device='cpu', dtype='fp32', train=True, repeats=2, calls=1)
    for row in ('| evit_mm |', '| timm |', '| evit_mm deploy |', '| timm fused |', '| evit_mm train |',
                '| timm train |'):
        assert row in table
    for ratio in ('deploy vs timm as shipped: wall', 'deploy vs timm fused: wall', 'train: wall'):
        assert ratio in table


def test_device_time_table_refuses_cuda_graphs_off_a_gpu():
    from evit_mm.benchmark.backbone import device_time_table
    with pytest.raises(ValueError, match='cuda_graphs needs a cuda device'):
        device_time_table('m0', (2, 64, 64), device='cpu', dtype='fp32', cuda_graphs=True)

"""``--keep-freed-memory``: asked for in the benchmark tools; in tools/train.py and tools/test.py on by default where
the run is on the CPU under glibc, off with ``--no-keep-freed-memory``. The allocator calls are recorded by the
``keep_freed_memory_calls`` fixture (conftest), never made in the test process."""
from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import pytest

from evit_mm.benchmark import allocator_option
from evit_mm.deploy import allocator
from evit_mm.tools import test as test_tool
from evit_mm.tools import train as train_tool

CONFIG = 'configs/demo/fpn_evit_m0_ade20k_demo.py'
KEPT = 'glibc keeps freed memory (mmap threshold 1024 MiB, trim threshold 2047 MiB)'


def _parser(default_on_cpu: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    allocator_option.add_allocator_argument(parser, default_on_cpu=default_on_cpu)
    return parser


def test_benchmark_tools_keep_freed_memory_only_when_asked(keep_freed_memory_calls):
    parser = _parser(default_on_cpu=False)
    assert allocator_option.apply_allocator_argument(parser.parse_args([]), 'cpu') == 'default allocator settings'
    assert keep_freed_memory_calls == []
    assert allocator_option.apply_allocator_argument(parser.parse_args(['--keep-freed-memory'])) == KEPT
    assert keep_freed_memory_calls == [1]
    with pytest.raises(SystemExit):  # no --no- form where off is the default
        parser.parse_args(['--no-keep-freed-memory'])


@pytest.mark.parametrize('argv, device, kept, reason', [
    ([], 'cpu', True, ': the default for CPU runs, --no-keep-freed-memory keeps glibc\'s own'),
    ([], 'cuda', False, ' (a cuda run; --keep-freed-memory keeps freed host memory for reuse here too)'),
    ([], 'npu', False, ' (a npu run; --keep-freed-memory keeps freed host memory for reuse here too)'),
    (['--no-keep-freed-memory'], 'cpu', False, ''),
    (['--keep-freed-memory'], 'cpu', True, ''),
    (['--keep-freed-memory'], 'cuda', True, ''),
])
def test_run_tools_keep_freed_memory_by_default_on_the_cpu(keep_freed_memory_calls, argv, device, kept, reason):
    line = allocator_option.apply_allocator_argument(_parser(default_on_cpu=True).parse_args(argv), device)
    assert keep_freed_memory_calls == ([1] if kept else [])
    assert line == (KEPT if kept else 'default allocator settings') + reason


def test_the_default_leaves_other_c_libraries_alone(keep_freed_memory_calls, monkeypatch):
    """Off by default where malloc is not glibc's (musl, macOS), saying why; asked for, the allocator's own error."""
    monkeypatch.setattr(allocator_option, 'glibc_malloc', lambda: False)
    line = allocator_option.apply_allocator_argument(_parser(default_on_cpu=True).parse_args([]), 'cpu')
    assert keep_freed_memory_calls == []
    assert line == 'default allocator settings (the C library is not glibc, whose settings keep freed memory)'


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc: Linux only')
def test_glibc_malloc_is_detected(monkeypatch):
    assert allocator.glibc_malloc()
    monkeypatch.setattr(allocator.ctypes, 'CDLL', lambda name: SimpleNamespace(mallopt=None))
    allocator._glibc.cache_clear()
    try:
        assert not allocator.glibc_malloc()
    finally:
        allocator._glibc.cache_clear()


@pytest.mark.parametrize('parse', [lambda argv: train_tool.parse_args([CONFIG, *argv]),
                                   lambda argv: test_tool.parse_args([CONFIG, 'model.pth', *argv])],
                         ids=['train', 'test'])
def test_train_and_test_take_both_forms(parse):
    assert parse([]).keep_freed_memory is None  # decided by the run's device
    assert parse(['--keep-freed-memory']).keep_freed_memory is True
    assert parse(['--no-keep-freed-memory']).keep_freed_memory is False

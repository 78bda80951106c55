"""keep_freed_memory: glibc stops handing back freed memory, so reallocating it costs no page faults."""
from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest

from evit_mm.deploy import allocator

# A 64 MB tensor allocated, written and freed 12 times: above glibc's largest dynamic mmap threshold (32 MiB), so
# by default each one is a fresh mapping whose 16,384 pages of 4 KiB fault on first write. Prints the faults of the
# last 4 rounds (torch's 64-byte-aligned allocations can take a few rounds to settle into the reused heap).
REALLOCATE = '''
import json, sys, torch
from evit_mm.benchmark.timing import minor_page_faults
from evit_mm.deploy import keep_freed_memory
if sys.argv[1] == 'keep':
    keep_freed_memory()
faults = []
for _ in range(12):
    before = minor_page_faults()
    torch.empty(16 << 20).fill_(1.0)
    faults.append(minor_page_faults() - before)
print(json.dumps(faults[-4:]))
'''


def _faults_per_allocation(mode: str) -> list[int]:
    out = subprocess.run([sys.executable, '-c', REALLOCATE, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt: Linux only')
def test_freed_memory_is_reused_without_page_faults():
    """In a fresh process each (the setting is process-wide): the default allocator faults in every page of every
    64 MB allocation; after keep_freed_memory the same allocations reuse the heap."""
    assert min(_faults_per_allocation('default')) >= 16384
    assert _faults_per_allocation('keep') == [0, 0, 0, 0]


def test_thresholds_must_fit_a_c_int():
    with pytest.raises(ValueError, match='mmap_threshold must be in 1..2147483647'):
        allocator.keep_freed_memory(mmap_threshold=0)
    with pytest.raises(ValueError, match='trim_threshold'):
        allocator.keep_freed_memory(trim_threshold=2 ** 31)


def test_other_c_libraries_are_refused_by_name(monkeypatch):
    """A C library without glibc's functions (musl, macOS) gets an error that says what is needed instead."""
    monkeypatch.setattr(allocator.ctypes, 'CDLL', lambda name: SimpleNamespace(mallopt=None))
    allocator._glibc.cache_clear()
    try:
        with pytest.raises(RuntimeError, match='needs glibc'):
            allocator.keep_freed_memory()
    finally:
        allocator._glibc.cache_clear()

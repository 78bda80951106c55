"""Keep freed memory in the process for reuse (glibc), so that CPU inference stops paying page faults.

Why: with glibc's default settings, every tensor above the malloc mmap threshold (dynamic, 128 KiB to 32 MiB) is
mapped fresh on allocation and unmapped when freed, and the top of the heap is returned to the OS once enough of
it is free. Every new page is then faulted in and zeroed by the kernel on its first write: about 1 us per 4 KiB
page on the project's CPU machine, 0.25 ms per MB, several times the cost of writing that MB. A deployed forward
pass of EfficientViT-M4 at 1x800x1344 took 1,000-4,200 such faults per call, timm's 6,300-12,600; with the settings
below none did, and both ran 6-21% faster (``docs/benchmarks.md``, "Page faults").

The setting is process-wide (every library's allocations, for the rest of the process) and keeps the process at
its peak resident memory. The environment variables ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` do the
same from outside the process; an ``LD_PRELOAD`` of jemalloc or tcmalloc has a similar effect.
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: The largest mmap threshold every glibc accepts (``DEFAULT_MMAP_THRESHOLD_MAX`` on 64-bit systems); newer ones
#: accept more.
GLIBC_MMAP_THRESHOLD_MAX = 32 << 20
#: Largest value of mallopt's ``int`` argument.
INT_MAX = 2 ** 31 - 1


@dataclass(frozen=True)
class AllocatorSettings:
    """What :func:`keep_freed_memory` set: allocations below ``mmap_threshold`` bytes come from the heap, and the
    heap's top is returned to the OS only beyond ``trim_threshold`` bytes of free memory."""

    mmap_threshold: int
    trim_threshold: int


@functools.cache
def _glibc() -> ctypes.CDLL:
    """The C library this process runs on, if it is glibc (the only one with both functions looked up)."""
    try:
        libc = ctypes.CDLL(None)  # the symbols already loaded into this process
        libc.gnu_get_libc_version  # noqa: B018 - glibc's own
        mallopt = libc.mallopt
    except (OSError, AttributeError) as error:
        raise RuntimeError('keep_freed_memory needs glibc (Linux), whose mallopt it calls; this process runs on '
                           'another C library: use its allocator settings, or an LD_PRELOAD of jemalloc or '
                           'tcmalloc') from error
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return libc


def glibc_malloc() -> bool:
    """Whether this process allocates through glibc's malloc, whose settings :func:`keep_freed_memory` changes."""
    try:
        _glibc()
    except RuntimeError:
        return False
    return True


def keep_freed_memory(mmap_threshold: int = 1 << 30, trim_threshold: int = INT_MAX) -> AllocatorSettings:
    """Make glibc's malloc keep freed memory mapped for reuse (``mallopt``), for the rest of the process.

    Args:
        mmap_threshold: Allocations of at least this many bytes are mapped and unmapped individually. glibc
            versions that refuse a value above :data:`GLIBC_MMAP_THRESHOLD_MAX` get that maximum instead.
        trim_threshold: Free bytes at the top of the heap beyond which glibc returns them to the OS.

    Returns:
        The thresholds now in force.

    Raises:
        RuntimeError: The C library is not glibc, or it refused the settings.
        ValueError: A threshold is not a positive ``int``.
    """
    for name, value in (('mmap_threshold', mmap_threshold), ('trim_threshold', trim_threshold)):
        if not 0 < value <= INT_MAX:
            raise ValueError(f'{name} must be in 1..{INT_MAX} bytes (a C int), got {value}')
    libc = _glibc()
    # The mmap threshold first: setting either one switches off glibc's dynamic mmap threshold, and with the trim
    # threshold alone it would stay at 128 KiB, every larger tensor a fresh mapping (136K page faults per training
    # step of M4, docs/benchmarks.md).
    if not libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold):
        mmap_threshold = min(mmap_threshold, GLIBC_MMAP_THRESHOLD_MAX)
        if not libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold):
            raise RuntimeError(f'glibc refused M_MMAP_THRESHOLD={mmap_threshold}')
    if not libc.mallopt(M_TRIM_THRESHOLD, trim_threshold):
        raise RuntimeError(f'glibc refused M_TRIM_THRESHOLD={trim_threshold}')
    return AllocatorSettings(mmap_threshold, trim_threshold)

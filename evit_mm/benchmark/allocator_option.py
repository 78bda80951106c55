"""The ``--keep-freed-memory`` option of the benchmark tools, ``tools/train.py`` and ``tools/test.py``
(:func:`evit_mm.deploy.keep_freed_memory`).

The benchmark tools take it when asked (they time the libraries as they ship). ``tools/train.py`` and
``tools/test.py`` keep freed memory by default wherever the run is on the CPU and the process allocates through
glibc (``--no-keep-freed-memory`` turns it off). Why: there every fresh tensor above glibc's mmap threshold is
page-faulted in again on every iteration, and keeping freed memory removes that at the same peak memory (the process
reaches its peak on every iteration anyway): Semantic FPN-EViT-M4 predicted 300 images of mixed sizes
1.70x faster on the CPU with the same maximum resident memory (3116 against 3138 MB), and its training iterations ran
1.14-1.22x faster (``docs/benchmarks.md``, "Keeping freed memory by default in CPU runs").
"""
from __future__ import annotations

import argparse

from ..deploy.allocator import glibc_malloc, keep_freed_memory

TIMING_HELP = ('make glibc keep freed memory for reuse before timing (mallopt; process-wide, so every model in the '
               'run gains): the times without the page faults of fresh memory, as tools/train.py and tools/test.py '
               'run on the CPU by default')


def add_allocator_argument(parser: argparse.ArgumentParser, help_text: str = TIMING_HELP,
                           default_on_cpu: bool = False) -> None:
    """``--keep-freed-memory`` (with the tool's own ``help_text``); with ``default_on_cpu`` also
    ``--no-keep-freed-memory``, and the default decided by :func:`apply_allocator_argument` from the run's device."""
    if default_on_cpu:
        parser.add_argument('--keep-freed-memory', action=argparse.BooleanOptionalAction, default=None,
                            help=help_text)
    else:
        parser.add_argument('--keep-freed-memory', action='store_true', help=help_text)


def apply_allocator_argument(args: argparse.Namespace, device: str | None = None) -> str:
    """Apply ``--keep-freed-memory`` where it is on: given, or left to its default (None, tools that take
    ``default_on_cpu``) in a run on the CPU (``device``) under glibc. Returns a line for the report or log saying
    which allocator settings run, and why where it is the default's choice.

    Raises:
        RuntimeError: The option was given and the C library is not glibc (:func:`keep_freed_memory`).
    """
    keep = args.keep_freed_memory
    chosen = keep is None
    if chosen:
        if device != 'cpu':
            return (f'default allocator settings (a {device} run; --keep-freed-memory keeps freed host memory for '
                    'reuse here too)')
        if not glibc_malloc():
            return 'default allocator settings (the C library is not glibc, whose settings keep freed memory)'
        keep = True
    if not keep:
        return 'default allocator settings'
    settings = keep_freed_memory()
    line = (f'glibc keeps freed memory (mmap threshold {settings.mmap_threshold >> 20} MiB, '
            f'trim threshold {settings.trim_threshold >> 20} MiB)')
    return line + (': the default for CPU runs, --no-keep-freed-memory keeps glibc\'s own' if chosen else '')

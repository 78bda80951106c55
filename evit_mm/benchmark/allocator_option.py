"""The ``--keep-freed-memory`` option of the benchmark tools and ``tools/test.py``
(:func:`evit_mm.deploy.keep_freed_memory`)."""
from __future__ import annotations

import argparse

from ..deploy.allocator import keep_freed_memory


TIMING_HELP = ('make glibc keep freed memory for reuse before timing (mallopt; process-wide, so every model in the '
               'run gains): the times without the page faults of fresh memory')


def add_allocator_argument(parser: argparse.ArgumentParser, help_text: str = TIMING_HELP) -> None:
    """``--keep-freed-memory`` (with the tool's own ``help_text``); apply it with :func:`apply_allocator_argument`."""
    parser.add_argument('--keep-freed-memory', action='store_true', help=help_text)


def apply_allocator_argument(args: argparse.Namespace) -> str:
    """Apply ``--keep-freed-memory`` if given; returns a line for the report saying which allocator settings ran."""
    if not args.keep_freed_memory:
        return 'default allocator settings'
    settings = keep_freed_memory()
    return (f'glibc keeps freed memory (mmap threshold {settings.mmap_threshold >> 20} MiB, '
            f'trim threshold {settings.trim_threshold >> 20} MiB)')

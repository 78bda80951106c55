"""``torch.profiler.profile`` without the lines its native library writes to the process's stderr.

Every start and stop of the profiler makes kineto print a line straight to file descriptor 2 (and, in CUDA builds on
a machine without a GPU, an error about counting devices), none of it about what is measured. Those lines went
into every table of the benchmark tools that profile (``--host-work``, ``--device-time``, the memory columns).
Only the start and the stop are silenced: whatever the profiled code writes to stderr still shows.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

from torch.profiler import profile


@contextlib.contextmanager
def quiet_profile(**options) -> Iterator[profile]:
    """``with torch.profiler.profile(**options) as prof:``, with the profiler's own start and stop lines kept off
    stderr."""
    prof = profile(**options)
    with native_stderr_silenced():
        prof.__enter__()
    try:
        yield prof
    finally:
        with native_stderr_silenced():
            prof.__exit__(None, None, None)


@contextlib.contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """File descriptor 2 to /dev/null (Python's ``sys.stderr`` flushed first, so none of its text is lost), for
    code whose stderr is known to be only the profiler's."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)

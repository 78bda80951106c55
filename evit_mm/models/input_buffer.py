"""The input image in channels-last memory, copied on the CPU into a buffer that the next call of the same shape
reuses.

Why: the backbone runs on channels-last maps, so an NCHW image is copied once at the start of every forward pass.
With glibc's default settings that copy is the one allocation of a deployed forward pass that gets fresh pages
from the OS every call (freed memory at the top of the heap is handed back between calls): EfficientViT-M4 deployed
at 1x800x1344 made 3150 page faults per call in one run, the 12.9 MB image's 3150 pages, and 875 with the copy into
a reused buffer; in two runs the reuse made it 1.04x and 1.10x faster, at 16x224x224 1.00-1.02x
(``docs/benchmarks.md``). A training step's copy is saved by the first conv for its weight gradient until the
backward pass frees the graph, so there the buffer serves the next step: M4's training step at 1x800x1344 made 2100
page faults instead of 7333 and was 1.012x faster, at 16x224x224 1.004x, and its peak memory per step dropped by the
image's size. Freed memory kept for reuse (:func:`evit_mm.deploy.keep_freed_memory`) does this process-wide; this
needs no setting.

Only where nothing can hold the buffer past the call: on the CPU, for an input that needs no gradient, in eager
calls, and while nothing else holds the last buffer or a view of it. Anything that still holds the last copy (a
training step's graph before its backward pass or kept with ``retain_graph``, a forward hook that kept its input)
makes the next call take a new buffer. One buffer per thread, so that threads sharing a model never share it; it
stays allocated between calls (one input's worth of memory per thread that ran on the CPU;
``EfficientViT.reuse_input_buffer = False`` does without it).
"""
from __future__ import annotations

import threading

import torch

from .eager_kernels import exporting_or_compiling

_buffers = threading.local()  # .image: this thread's last buffer; .references: its storage's use count when new
#: How many tensors share a storage (views included); torch's own tests use it. Absent: no reuse.
_storage_use_count = getattr(torch._C, '_storage_Use_Count', None)


def _references(tensor: torch.Tensor) -> int:
    return _storage_use_count(tensor.untyped_storage()._cdata)


def channels_last_image(x: torch.Tensor, reuse: bool = True) -> torch.Tensor:
    """``x.contiguous(memory_format=torch.channels_last)``; with ``reuse``, on the CPU for an ``x`` that needs no
    gradient, in eager mode, a copy into this thread's reused buffer, as long as nothing else holds that buffer
    (module docstring)."""
    if (not reuse or _storage_use_count is None or x.is_contiguous(memory_format=torch.channels_last)
            or not x.is_cpu or x.requires_grad or exporting_or_compiling()):
        return x.contiguous(memory_format=torch.channels_last)
    buffer = getattr(_buffers, 'image', None)
    if (buffer is None or buffer.shape != x.shape or buffer.dtype != x.dtype
            or _references(buffer) != _buffers.references):  # a view or the tensor itself kept elsewhere
        _buffers.image = None  # the old buffer's memory is free for the new one
        with torch.inference_mode(False):  # a normal tensor: writable in and outside inference mode
            buffer = torch.empty(x.shape, dtype=x.dtype, memory_format=torch.channels_last)
        _buffers.image, _buffers.references = buffer, _references(buffer)
    # an alias, not the buffer: whoever keeps it (or a view of it) adds to the storage's use count
    return buffer.copy_(x).detach()

"""When evit_mm's own CPU kernels (GEMM convs, fused convs, Winograd) may replace PyTorch's convolution."""
from __future__ import annotations

import torch


def exporting_or_compiling() -> bool:
    """Whether the current call is being traced, scripted, exported to ONNX or compiled (eager-only kernels off:
    graphs keep their convolutions, and ``torch.compile`` chooses its own kernels)."""
    return (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())


def eager_channels_last_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is a channels-last CPU map in an eager call (device first: the cheapest rejection, and the
    one every call on a GPU, host-bound at batch 1, ends at)."""
    return (x.device.type == 'cpu' and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not exporting_or_compiling())

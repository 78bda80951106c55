"""When evit_mm's own CPU kernels (GEMM convs, fused convs, Winograd) may replace PyTorch's convolution."""
from __future__ import annotations

import functools
import platform
from collections.abc import Callable

import torch

from ..compat.torch_api import get_autocast_dtype, is_autocast_enabled, is_compiling

#: Where each of evit_mm's own CPU kernels measured faster than PyTorch's oneDNN convolutions, by the ``ConvBN``
#: switch that turns it on: ``(vendor, capability)`` pairs of :func:`cpu_vendor` and
#: ``torch.backends.cpu.get_cpu_capability()``, vendor None for any. ``gemm_convs``: the training step's 1x1 convs
#: as GEMMs (torch's GEMM is MKL's, whose verbose mode names its AVX-512 kernels on an Intel CPU);
#: ``im2col_weight_grads``: the stem convs' weight gradients by im2col; ``fused_kernels``: the deployed convs' fused
#: ReLU and 1x1 GEMMs (also the eval-mode convs folded on the fly).
OWN_KERNEL_CPUS = {
    'gemm_convs': frozenset({(None, 'AVX2'), ('GenuineIntel', 'AVX512')}),
    'im2col_weight_grads': frozenset({(None, 'AVX2')}),
    'fused_kernels': frozenset({(None, 'AVX2')}),
}


@functools.cache
def cpuinfo() -> dict[str, str]:
    """The first processor's fields in Linux's ``/proc/cpuinfo`` (``vendor_id``, ``model name``, ...); empty where
    there is no such file (another OS)."""
    fields: dict[str, str] = {}
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as lines:
            for line in lines:
                if not line.strip():  # the end of the first processor's block
                    break
                key, _, value = line.partition(':')
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_vendor() -> str | None:
    """The x86 CPU's vendor string as Linux reports it (``GenuineIntel``, ``AuthenticAMD``), or None where it is
    not known (another OS or architecture)."""
    return cpuinfo().get('vendor_id')


def cpu_description() -> str:
    """The CPU as the benchmark tools name it: its model name where Linux reports it (else the machine type), and
    the vector ISA torch's CPU kernels run (``torch.backends.cpu.get_cpu_capability()``), which, with the vendor,
    decides evit_mm's CPU kernel defaults."""
    name = cpuinfo().get('model name') or platform.processor() or platform.machine() or 'unknown CPU'
    return f'{name}, {torch.backends.cpu.get_cpu_capability()}'


def own_kernel_measured_faster(switch: str) -> bool:
    """Whether this CPU is one of those where the own kernel behind ``switch`` (a key of :data:`OWN_KERNEL_CPUS`)
    beat oneDNN's convolutions: the default of ``EfficientViT(gemm_convs=...)`` for each switch and of
    ``switch_to_deploy(fused_kernels=...)``. Measured (M4, interleaved, ``docs/benchmarks.md``): on AVX2 CPUs, several
    sessions, training steps 1.07-1.15x and the deployed forward pass 1.07-1.14x with every own kernel; on a 2-core
    AMD EPYC (Zen 4, AVX-512) oneDNN won at all three (training steps 1.06-1.08x, the 1x1 GEMMs alone 0.96x, the
    deployed forward 1.02-1.05x); on a 2-core Intel Xeon (AVX-512) the 1x1 GEMMs made training steps 1.06-1.09x
    faster, the im2col weight gradients 0.96-0.97x, the deployed forward level (0.98-1.02x). Elsewhere (ARM, ...)
    unmeasured: PyTorch's own path.

    Raises:
        ValueError: ``switch`` is not one of :data:`OWN_KERNEL_CPUS`.
    """
    if switch not in OWN_KERNEL_CPUS:
        raise ValueError(f'unknown own-kernel switch {switch!r}; choose one of {", ".join(OWN_KERNEL_CPUS)}')
    cpus = OWN_KERNEL_CPUS[switch]
    capability = torch.backends.cpu.get_cpu_capability()
    return (None, capability) in cpus or (cpu_vendor(), capability) in cpus


def _onnx_export_check() -> Callable[[], bool]:
    """``torch.onnx.is_in_onnx_export``, or the same two flags read directly where torch keeps them: its function
    imports two modules on every call (1.1 us of the 1.5 us :func:`exporting_or_compiling` took in torch 2.14,
    which runs about 120 times per deployed M4 forward, on the host a GPU waits for at batch 1)."""
    try:
        from torch.onnx._internal.exporter import _flags
        from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    except ImportError:  # another torch's layout: its public function
        return torch.onnx.is_in_onnx_export
    if not (hasattr(_flags, '_is_onnx_exporting') and hasattr(GLOBALS, 'in_onnx_export')):
        return torch.onnx.is_in_onnx_export
    return lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting


_in_onnx_export = _onnx_export_check()


def exporting_or_compiling() -> bool:
    """Whether the current call is being traced, scripted, exported to ONNX or compiled (eager-only kernels off:
    graphs keep their convolutions, and ``torch.compile`` chooses its own kernels)."""
    # compilation first: dynamo may not trace into the ONNX flags' module (a graph break under fullgraph)
    return (is_compiling() or torch.jit.is_tracing() or torch.jit.is_scripting()
            or _in_onnx_export())


def eager_channels_last_cpu(x: torch.Tensor) -> bool:
    """Whether ``x`` is a channels-last CPU map in an eager call (device first: the cheapest rejection, and the
    one every call on a GPU, host-bound at batch 1, ends at; ``is_cpu`` costs 0.05 us where ``device.type`` costs
    0.34)."""
    return (x.is_cpu and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
            and not exporting_or_compiling())


def eager_autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype in which autocast runs convolutions and GEMMs on ``x``'s device (CPU or CUDA) in this eager call, or
    None where it does not apply: autocast off there, ``x`` not a floating-point tensor or float64 (which autocast
    leaves alone), or a trace, export or compilation (whose graphs keep plain convolutions for autocast to handle).

    Deployed layers cast their operands to this dtype themselves, as autocast would for the conv or linear layer they
    replace, for two reasons: evit_mm's CPU kernels call ops that autocast does not cover (oneDNN's own
    convolutions, in-place GEMMs), and autocast casts every weight and bias again on every call (two more kernels
    per layer on a GPU, which waits for kernel launches at small batches), where a deployed layer casts them once.
    """
    device = 'cuda' if x.is_cuda else 'cpu' if x.is_cpu else None  # not x.device.type (0.34 us)
    if device is None or not is_autocast_enabled(device):  # the cheapest rejections first
        return None
    if not x.is_floating_point() or x.dtype == torch.float64 or exporting_or_compiling():
        return None
    return get_autocast_dtype(device)


def eager_conv_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype a convolution of ``x`` with ``weight`` computes in, in this eager call: autocast's where it applies
    (:func:`eager_autocast_dtype`, which also casts a float16 or bfloat16 ``x``), else the operands' own where they
    agree; None where they do not (the conv itself rejects mixed dtypes). Callers that keep their kernels out of
    traces and compilations check :func:`exporting_or_compiling` themselves."""
    return eager_autocast_dtype(x) or (x.dtype if weight.dtype == x.dtype else None)

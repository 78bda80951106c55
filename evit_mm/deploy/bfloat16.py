"""The dense parts of a deployed model on bfloat16 weights, float32 at their boundaries.

An opt-in deploy step, not an exact one: bfloat16 keeps 8 bits of mantissa, so features move by about 0.3-1% of
their scale. What it buys is speed where the hardware multiplies bfloat16 natively and faster than float32 (x86
CPUs with AVX512-BF16 or AMX, through oneDNN; GPUs): on a 2-core AMD Zen 4 (AVX512-BF16) the deployed
EfficientViT-M4 backbone ran 1.54-1.64x faster than in float32 and RetinaNet-EViT-M4's whole prediction 1.53x; on a
2-core Intel Xeon with AVX512-BF16 but no AMX the backbone ran 0.68-0.69x as fast, which
:func:`warn_where_bfloat16_is_slow` tells the user (``docs/benchmarks.md``).

Why weights rather than ``torch.autocast``: autocast casts every weight on every call and leaves the elementwise
passes between the products in float32; a deployed model casts its weights once. Why float32 at the boundaries:
box decoding, NMS, RoI heads, resizing logits and every other post-processing step keep float32 (a box corner at
x = 1000 is only known to within 4 pixels in bfloat16).
"""
from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from ..models.eager_kernels import cpu_description
from .dense_parts import dense_parts


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: on CPUs, oneDNN's check for AVX512-BF16 / AMX."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


#: The convolution :func:`cpu_bfloat16_speedup` times: a 1x1 conv of EfficientViT-M4's FFN on a channels-last map
#: (input shape, output channels), the kind of product the deployed backbone and its training step are made of.
SPEEDUP_PROBE = ((8, 256, 28, 28), 512)


@functools.cache
def cpu_bfloat16_speedup(rounds: int = 3) -> float:
    """How much faster oneDNN's convolution runs in bfloat16 than in float32 on this CPU (> 1: faster), measured once
    per process (about 0.1 s) on :data:`SPEEDUP_PROBE`, the best of ``rounds`` interleaved calls of each.

    Why measure: oneDNN's flag (:func:`native_bfloat16`) says whether the CPU has bfloat16 instructions, not whether
    they are faster. On AMD's Zen 4 (AVX512-BF16) the deployed M4 ran 1.54-1.64x faster on bfloat16 weights; on an
    Intel Xeon with AVX512-BF16 but no AMX it ran 0.68-0.69x, its training step under bfloat16 autocast 0.73-0.77x,
    and this probe measured 0.68-0.70x there (``docs/benchmarks.md``)."""
    (batch, channels, height, width), out_channels = SPEEDUP_PROBE
    generator = torch.Generator().manual_seed(0)  # the caller's random stream stays untouched
    x = torch.randn(batch, channels, height, width, generator=generator).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(out_channels, channels, 1, 1, generator=generator)
    operands = {dtype: (x.to(dtype), weight.to(dtype)) for dtype in (torch.float32, torch.bfloat16)}
    best = dict.fromkeys(operands, float('inf'))
    with torch.inference_mode():
        for _ in range(rounds + 1):  # the first round builds oneDNN's primitives
            for dtype, (inputs, kernel) in operands.items():
                start = time.perf_counter()
                torch.nn.functional.conv2d(inputs, kernel)
                best[dtype] = min(best[dtype], time.perf_counter() - start)
    return best[torch.float32] / best[torch.bfloat16]


def warn_where_bfloat16_is_slow(device: torch.device | str, what: str) -> None:
    """Warn that ``what`` (a bfloat16 deployment, autocast training) will be slower than float32 on ``device``: where
    it has no native bfloat16 arithmetic (:func:`native_bfloat16`: it still runs, emulated), or, on a CPU, where its
    bfloat16 instructions measured slower than float32 (:func:`cpu_bfloat16_speedup`)."""
    if not native_bfloat16(device):
        warnings.warn(f'{what} on {device}, which has no native bfloat16 arithmetic (x86 CPUs need AVX512-BF16 or '
                      'AMX): it will run slower than float32 here', stacklevel=3)
    elif torch.device(device).type == 'cpu' and (speedup := cpu_bfloat16_speedup()) < 1.0:
        warnings.warn(f'{what} on this CPU ({cpu_description()}): its bfloat16 instructions measured slower than '
                      f'float32 (a 1x1 convolution {speedup:.2f}x as fast), so this will likely run slower than '
                      'float32 here', stacklevel=3)


def _to_bfloat16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16) if t.is_floating_point() and t.dtype != torch.bfloat16 else t


def _to_float32(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.is_floating_point() and t.dtype != torch.float32 else t


class Bfloat16Forward:
    """A module's ``forward`` run on bfloat16: floating-point tensors among the arguments (also inside lists,
    tuples and dicts) are cast to bfloat16, floating-point tensors among the outputs back to float32.

    Installed as the module's instance attribute ``forward``, so that it also serves callers that call
    ``self.forward(...)`` directly (mmseg's decode heads do), which forward hooks would miss.
    """

    def __init__(self, forward: Callable) -> None:
        self.forward = forward

    def __call__(self, *args, **kwargs):
        args, kwargs = tree_map_only(torch.Tensor, _to_bfloat16, (args, kwargs))
        return tree_map_only(torch.Tensor, _to_float32, self.forward(*args, **kwargs))


def run_in_bfloat16(model: nn.Module) -> tuple[str, ...]:
    """Convert the parameters and buffers of ``model``'s dense parts (backbone, neck, dense heads:
    :func:`~.dense_parts.dense_parts`; RoI heads, post-processing and classifier heads stay float32) to bfloat16, in
    place, and wrap each part's ``forward`` in :class:`Bfloat16Forward`. Returns the names of the parts.

    Fold BatchNorms before (``optimize_for_inference`` does): folding in float32 and rounding once is more exact
    than folding bfloat16 statistics. Calling it twice changes nothing more.
    """
    parts = dense_parts(model)
    for part in parts.values():
        part.to(torch.bfloat16)
        if not isinstance(part.__dict__.get('forward'), Bfloat16Forward):
            part.forward = Bfloat16Forward(part.forward)
    return tuple(parts)

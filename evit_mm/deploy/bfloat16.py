"""The dense parts of a deployed model on bfloat16 weights, float32 at their boundaries.

An opt-in deploy step, not an exact one: bfloat16 keeps 8 bits of mantissa, so features move by about 0.3-1% of
their scale. What it buys is speed where the hardware multiplies bfloat16 natively (x86 CPUs with AVX512-BF16 or
AMX, through oneDNN; GPUs): on a 2-core AVX512-BF16 CPU the deployed EfficientViT-M4 backbone ran 1.54-1.64x
faster than in float32 and RetinaNet-EViT-M4's whole prediction 1.53x (``docs/benchmarks.md``).

Why weights rather than ``torch.autocast``: autocast casts every weight on every call and leaves the elementwise
passes between the products in float32; a deployed model casts its weights once. Why float32 at the boundaries:
box decoding, NMS, RoI heads, resizing logits and every other post-processing step keep float32 (a box corner at
x = 1000 is only known to within 4 pixels in bfloat16).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from .dense_parts import dense_parts


def native_bfloat16(device: torch.device | str) -> bool:
    """Whether ``device`` multiplies bfloat16 in hardware: on CPUs, oneDNN's check for AVX512-BF16 / AMX."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.is_bf16_supported()
    return torch.backends.mkldnn.is_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def warn_unless_native_bfloat16(device: torch.device | str, what: str) -> None:
    """Warn that ``what`` (a bfloat16 deployment, autocast training) will be slower than float32 where ``device``
    has no native bfloat16 arithmetic (:func:`native_bfloat16`): it still runs, emulated."""
    if not native_bfloat16(device):
        warnings.warn(f'{what} on {device}, which has no native bfloat16 arithmetic (x86 CPUs need AVX512-BF16 or '
                      'AMX): it will run slower than float32 here', stacklevel=3)


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

"""The precisions the benchmarks time in: float32, or autocast to float16 / bfloat16."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: ``--dtype`` choices and the autocast dtype each one means (None: plain float32, no autocast).
DTYPES: dict[str, torch.dtype | None] = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def autocast(device_type: str, dtype: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` on ``device_type`` (``cpu``, ``cuda``); a no-op context for ``fp32``."""
    if dtype not in DTYPES:
        raise ValueError(f'unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}')
    if DTYPES[dtype] is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=DTYPES[dtype])


def norm_relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    """``|got - expected| / |expected|`` over the whole tensor (Frobenius norms, in float64): the error measure of
    lower-precision paths (bfloat16 weights, Winograd in bfloat16), whose rounding is relative to the scale of the
    whole output rather than to each value."""
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


@contextlib.contextmanager
def exact_float32() -> Iterator[None]:
    """True float32 convolutions and matrix products inside (no TF32 on Ampere and later GPUs): equivalence
    checks between implementations must not compare two 10-bit-mantissa products."""
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul

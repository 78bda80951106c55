"""Mixed-precision training on the CPU: mmengine's ``AmpOptimWrapper`` refuses to run without CUDA, NPU, MLU or
MUSA, so ``tools/train.py --amp`` on a CPU machine uses this wrapper instead."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUBfloat16OptimWrapper(OptimWrapper):
    """``OptimWrapper`` whose forward passes (and so their backward passes) run under CPU autocast to bfloat16.

    bfloat16 keeps float32's exponent range, so unlike float16 on GPUs it needs no loss scaling (torch's CPU autocast
    has no scaler either); parameters, gradients and optimizer state stay float32. Faster where the CPU multiplies
    bfloat16 natively (AVX512-BF16, AMX): EfficientViT-M4 training steps 1.52x / 1.48x faster than in float32 at
    16x224x224 / 1x800x1344 on a 2-core AVX512-BF16 CPU, with the strided depthwise convs' input gradients in float32
    (:mod:`evit_mm.models.depthwise_grad`; ``docs/benchmarks.md``); slower than float32 elsewhere.
    """

    @contextmanager
    def optim_context(self, model: torch.nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast('cpu', dtype=torch.bfloat16):
            yield

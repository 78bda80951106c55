"""Training-engine helpers: CPU torchrun support, CPU mixed precision, adaptive gradient clipping, repeated
augmentation."""
from .agc import AGCOptimWrapper
from .cpu_amp import CPUBfloat16OptimWrapper
from .cpu_distributed import CPUDistributedDataParallel, prepare_cpu_distributed
from .samplers import RepeatAugSampler

__all__ = ['AGCOptimWrapper', 'CPUBfloat16OptimWrapper', 'CPUDistributedDataParallel', 'RepeatAugSampler',
           'prepare_cpu_distributed']

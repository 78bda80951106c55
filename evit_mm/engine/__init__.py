"""Training-engine helpers: CPU torchrun support, adaptive gradient clipping, repeated augmentation."""
from .agc import AGCOptimWrapper
from .cpu_distributed import CPUDistributedDataParallel, prepare_cpu_distributed
from .samplers import RepeatAugSampler

__all__ = ['AGCOptimWrapper', 'CPUDistributedDataParallel', 'RepeatAugSampler', 'prepare_cpu_distributed']

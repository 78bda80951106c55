"""Training-engine helpers: CPU torchrun support, CPU mixed precision, adaptive gradient clipping, repeated
augmentation, optimizers that ``torch.compile`` can trace."""
from .agc import AGCOptimWrapper
from .cpu_amp import CPUBfloat16OptimWrapper
from .cpu_distributed import CPUDistributedDataParallel, prepare_cpu_distributed
from .optim_constructor import PlainDictOptimWrapperConstructor
from .samplers import RepeatAugSampler

__all__ = ['AGCOptimWrapper', 'CPUBfloat16OptimWrapper', 'CPUDistributedDataParallel',
           'PlainDictOptimWrapperConstructor', 'RepeatAugSampler', 'prepare_cpu_distributed']

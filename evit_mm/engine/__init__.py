"""Training-engine helpers (mmengine runs on CPU-only machines too)."""
from .cpu_distributed import CPUDistributedDataParallel, prepare_cpu_distributed

__all__ = ['CPUDistributedDataParallel', 'prepare_cpu_distributed']

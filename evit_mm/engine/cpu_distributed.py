"""torchrun on CPU-only machines (gloo) through mmengine's Runner.

mmengine 0.10 assumes a GPU per process when ``launcher='pytorch'``: its ``init_dist`` calls
``torch.cuda.set_device`` and its Runner wraps the model in DDP with ``device_ids=[LOCAL_RANK]``, which torch
refuses for CPU modules. On a machine without CUDA, :func:`prepare_cpu_distributed` initialises the gloo process
group from torchrun's environment (the Runner then skips its own init) and selects
:class:`CPUDistributedDataParallel`. Launching stays torchrun's job; training stays mmengine's.

torch's ``SyncBatchNorm`` trains on GPUs only ("SyncBatchNorm expected input tensor to be on GPU"), and mmseg's
decode heads ask for it by default (``norm_cfg=dict(type='SyncBN')``), as does ``sync_bn='torch'`` in a config: on
the CPU the wrapper turns it back into ``BatchNorm`` (per-process statistics), saying so, instead of failing at the
first training step.
"""
from __future__ import annotations

import logging

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class CPUDistributedDataParallel(MMDistributedDataParallel):
    """``MMDistributedDataParallel`` for CPU modules: drops the ``device_ids`` mmengine always passes, and runs
    ``SyncBatchNorm`` layers as ``BatchNorm`` (torch's trains on GPUs only)."""

    def __init__(self, module: torch.nn.Module, device_ids: list[int] | None = None, **kwargs) -> None:
        synced = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in module.modules())
        if synced:
            module = revert_sync_batchnorm(module)
            print_log(f'CPU distributed training: {synced} SyncBatchNorm layers run as BatchNorm (torch synchronises '
                      'BatchNorm statistics on GPUs only), each process with its own batch statistics',
                      logger='current', level=logging.WARNING)
        super().__init__(module=module, device_ids=None, **kwargs)


def prepare_cpu_distributed(cfg: Config) -> bool:
    """For ``launcher='pytorch'`` without CUDA: start gloo and pick the CPU DDP wrapper. Returns whether it did."""
    if cfg.get('launcher', 'none') != 'pytorch' or torch.cuda.is_available():
        return False
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')  # env:// rendezvous set by torchrun
    wrapper = dict(cfg.get('model_wrapper_cfg') or {})
    if wrapper.get('type', 'MMDistributedDataParallel') == 'MMDistributedDataParallel':
        wrapper['type'] = 'CPUDistributedDataParallel'
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
        cfg.model_wrapper_cfg = wrapper
    return True

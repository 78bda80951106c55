"""The CPU DDP wrapper behind torchrun on CPU-only machines (the torchrun run itself: test_detection_e2e)."""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from evit_mm.engine.cpu_distributed import CPUDistributedDataParallel


@pytest.fixture
def gloo_group(tmp_path):
    """A one-process gloo group, as torchrun's would be on one CPU machine."""
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _model_with_sync_bn() -> nn.Module:
    head = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))
    return nn.SyncBatchNorm.convert_sync_batchnorm(head)  # what mmseg's SyncBN heads and sync_bn='torch' build


def test_sync_batch_norm_runs_as_batch_norm_on_the_cpu(gloo_group):
    model = _model_with_sync_bn().train()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(ValueError, match='SyncBatchNorm expected input tensor to be on GPU'):
        model(x)  # torch's own, what a CPU run met at its first step
    reference = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1)).train()
    reference.load_state_dict(model.state_dict())
    wrapped = CPUDistributedDataParallel(model)
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in wrapped.modules())
    assert torch.allclose(wrapped(x), reference(x), atol=1e-6)
    assert torch.equal(wrapped.module[1].running_mean, reference[1].running_mean)  # statistics kept and updated

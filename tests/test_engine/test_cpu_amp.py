"""tools/train.py --amp: mmengine's AmpOptimWrapper where an accelerator trains, bfloat16 autocast on the CPU."""
import warnings

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import OPTIM_WRAPPERS

from evit_mm.compat.torch_api import get_autocast_dtype, is_autocast_enabled
from evit_mm.engine import CPUBfloat16OptimWrapper
from evit_mm.tools import config_options
from evit_mm.tools.config_options import enable_amp


def test_wrapper_runs_the_forward_pass_in_bfloat16_and_keeps_float32_weights():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    wrapper = OPTIM_WRAPPERS.build(dict(type='CPUBfloat16OptimWrapper',
                                        optimizer=torch.optim.SGD(model.parameters(), lr=0.1)))
    assert isinstance(wrapper, CPUBfloat16OptimWrapper)
    before = [p.detach().clone() for p in model.parameters()]
    with wrapper.optim_context(model):
        assert is_autocast_enabled('cpu') and get_autocast_dtype('cpu') == torch.bfloat16
        out = model(torch.randn(4, 8))
        loss = out.float().square().mean()
    assert out.dtype == torch.bfloat16 and not is_autocast_enabled('cpu')
    wrapper.update_params(loss)
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())  # stepped, zeroed
    assert all(not torch.equal(p, b) for p, b in zip(model.parameters(), before))


def _config(wrapper_type: str = 'OptimWrapper') -> Config:
    return Config(dict(optim_wrapper=dict(type=wrapper_type, optimizer=dict(type='AdamW', lr=1e-4))))


def test_amp_on_the_cpu_chooses_bfloat16_autocast(monkeypatch):
    monkeypatch.setattr(config_options, 'get_device', lambda: 'cpu')
    monkeypatch.setattr('evit_mm.deploy.bfloat16.native_bfloat16', lambda device: True)
    monkeypatch.setattr('evit_mm.deploy.bfloat16.cpu_bfloat16_speedup', lambda: 1.5)
    cfg = _config()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # native and faster: nothing to say
        enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'CPUBfloat16OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    monkeypatch.setattr('evit_mm.deploy.bfloat16.cpu_bfloat16_speedup', lambda: 0.7)
    with pytest.warns(UserWarning, match=r'--amp \(bfloat16 autocast\) on this CPU \(.+\): its bfloat16 '
                                         r'instructions measured slower than float32 \(a 1x1 convolution 0.70x'):
        enable_amp(_config())
    monkeypatch.setattr('evit_mm.deploy.bfloat16.native_bfloat16', lambda device: False)
    with pytest.warns(UserWarning, match=r'--amp \(bfloat16 autocast\) on cpu, which has no native bfloat16 '
                                         'arithmetic'):
        enable_amp(_config())


def test_amp_on_a_gpu_keeps_mmengines_wrapper(monkeypatch):
    monkeypatch.setattr(config_options, 'get_device', lambda: 'cuda')
    cfg = _config()
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper' and cfg.optim_wrapper.loss_scale == 'dynamic'


def test_amp_refuses_other_wrappers_naming_the_valid_ones():
    with pytest.raises(ValueError, match="OptimWrapper, AmpOptimWrapper or CPUBfloat16OptimWrapper, got "
                                         "'AGCOptimWrapper'"):
        enable_amp(_config('AGCOptimWrapper'))

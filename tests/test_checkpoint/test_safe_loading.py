"""Weights-only loading on every path a checkpoint takes (evit_mm's reader, mmengine's loader for ``load_from`` and
``--resume``), with torch's own allow-list (torch >= 2.4) and with the allow-list unpickler evit_mm uses on older
torch, which these tests run on whatever torch is installed."""
from __future__ import annotations

import os
import pickle
from collections import Counter, OrderedDict

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import _load_checkpoint
from torch import nn

from evit_mm.checkpoint import CheckpointReadError, read_checkpoint
from evit_mm.compat.safe_checkpoints import _ALLOW_LIST_PICKLE, load_weights_only


def _allow_list_unpickler(path):
    """The loader evit_mm uses where torch has no allow-list of its own (torch < 2.4)."""
    return torch.load(path, map_location='cpu', weights_only=False, pickle_module=_ALLOW_LIST_PICKLE)


LOADERS = {
    'load_weights_only': load_weights_only,
    'allow_list_unpickler': _allow_list_unpickler,
    "mmengine's loader": lambda path: _load_checkpoint(str(path), map_location='cpu'),
}


def _training_checkpoint() -> dict:
    """What an mmengine training checkpoint holds besides tensors: the message hub's buffers, numpy arrays,
    scalars and dtypes, plain containers."""
    losses = HistoryBuffer()
    for value in (0.5, 0.25):
        losses.update(value)
    return {
        'meta': {'epoch': 2, 'iter': 8, 'seed': 0, 'dataset_meta': {'classes': ('a', 'b')}, 'cfg': 'x = 1'},
        'state_dict': OrderedDict(weight=torch.arange(6.0).reshape(2, 3), half=torch.ones(2, dtype=torch.bfloat16)),
        'message_hub': {'log_scalars': {'train/loss': losses}, 'runtime_info': {'max_iters': 12}},
        'numpy': {'array': np.arange(4, dtype=np.int64), 'scalar': np.float64(0.75), 'dtype': np.dtype('float32')},
        'containers': {'set': {1, 2}, 'complex': 1 + 2j, 'bytearray': bytearray(b'ab')},
        'param_schedulers': [{'milestones': Counter({8: 1, 11: 1}), 'gamma': 0.1}],  # mmengine's MultiStepLR
        'torch': {'device': torch.device('cpu'), 'dtypes': [torch.bfloat16, torch.bool, torch.uint8, torch.float32]},
    }


@pytest.mark.parametrize('loader', LOADERS, ids=list(LOADERS))
def test_training_checkpoints_load_weights_only(loader, tmp_path):
    path = tmp_path / 'epoch_2.pth'
    saved = _training_checkpoint()
    torch.save(saved, path)
    loaded = LOADERS[loader](path)
    assert loaded['meta'] == saved['meta']
    for name, tensor in saved['state_dict'].items():
        assert torch.equal(loaded['state_dict'][name], tensor) and loaded['state_dict'][name].dtype == tensor.dtype
    buffer = loaded['message_hub']['log_scalars']['train/loss']
    assert isinstance(buffer, HistoryBuffer) and buffer.current() == 0.25 and buffer.mean() == pytest.approx(0.375)
    np.testing.assert_array_equal(loaded['numpy']['array'], saved['numpy']['array'])
    assert loaded['numpy']['scalar'] == 0.75 and loaded['numpy']['dtype'] == np.dtype('float32')
    assert loaded['containers'] == saved['containers']
    assert loaded['param_schedulers'] == saved['param_schedulers'] and loaded['torch'] == saved['torch']
    assert type(loaded['param_schedulers'][0]['milestones']) is Counter


@pytest.mark.parametrize('loader', LOADERS, ids=list(LOADERS))
def test_a_real_mmengine_checkpoint_loads_weights_only(loader, tmp_path):
    """What mmengine's runner saves (AdamW, LinearLR then MultiStepLR, the message hub) with evit_mm imported."""
    from tests.tiny_runner import build_runner
    runner, _ = build_runner(tmp_path, max_epochs=1)
    runner.train()
    loaded = LOADERS[loader](tmp_path / 'epoch_1.pth')
    assert loaded['meta']['epoch'] == 1 and loaded['meta']['iter'] == 4
    assert [type(state.get('milestones')) for state in loaded['param_schedulers']] == [type(None), Counter]
    assert torch.equal(loaded['state_dict']['linear.weight'], runner.model.linear.weight.detach())


class _RunsCodeWhenUnpickled:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


@pytest.mark.parametrize('loader', LOADERS, ids=list(LOADERS))
def test_pickled_objects_are_refused_not_run(loader, tmp_path):
    marker = tmp_path / 'ran'
    for name, payload in (('module.pth', {'model': nn.Linear(2, 2)}),
                          ('code.pth', {'state_dict': {}, 'meta': _RunsCodeWhenUnpickled(str(marker))})):
        torch.save(payload, tmp_path / name)
        with pytest.raises(pickle.UnpicklingError, match='(?i)unsupported global'):
            LOADERS[loader](tmp_path / name)
    assert not marker.exists()


def test_evit_mm_reader_names_the_refused_global(tmp_path):
    """torch words a refusal two ways ("Unsupported global: GLOBAL x", "unsupported GLOBAL posix.mkdir whose module
    posix is blocked"); evit_mm's error names the global for both."""
    marker = tmp_path / 'ran'
    torch.save({'meta': _RunsCodeWhenUnpickled(str(marker))}, tmp_path / 'code.pth')
    torch.save({'model': nn.Linear(2, 2)}, tmp_path / 'module.pth')
    with pytest.raises(CheckpointReadError, match=r'holds Python objects besides weights \((posix|nt)\.mkdir\)'):
        read_checkpoint(tmp_path / 'code.pth')
    with pytest.raises(CheckpointReadError, match=r'besides weights \(torch\.nn\.modules\.linear\.Linear\)'):
        read_checkpoint(tmp_path / 'module.pth')
    assert not marker.exists()

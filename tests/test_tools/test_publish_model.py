"""tools/publish_model.py: weights and plain metadata of a training checkpoint, named by their SHA-256 (the
end-to-end detection run publishes a real one and evaluates it: tests/test_detection_e2e.py)."""
from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
import torch

from evit_mm.checkpoint import CheckpointReadError
from evit_mm.tools.entry import run
from evit_mm.tools.publish import main, publish_checkpoint


class TrainingState:  # stands for mmengine's objects in a training checkpoint (message hub, schedulers)
    pass


def _training_checkpoint(path) -> dict:
    weights = {'backbone.conv.weight': torch.randn(4, 3, 3, 3).transpose(0, 1), 'head.bias': torch.randn(4)}
    torch.save({'meta': {'dataset_meta': {'classes': ('circle', 'square')}, 'epoch': 12, 'cfg': "model = dict()",
                         'hook_msgs': {'last_ckpt': 'x'}},
                'state_dict': weights, 'optimizer': {'state': {0: {'exp_avg': torch.zeros(4)}}},
                'message_hub': TrainingState(), 'ema_state_dict': dict(weights)}, path)
    return weights


def test_publish_keeps_weights_and_plain_metadata_named_by_hash(tmp_path):
    src = tmp_path / 'epoch_12.pth'
    weights = _training_checkpoint(src)
    # a checkpoint that pickles objects outside evit_mm's allowlist of mmengine's types is refused, not executed...
    with pytest.raises(CheckpointReadError):
        publish_checkpoint(src, tmp_path / 'out' / 'model.pth')
    # ...one as mmengine writes it (its message hub's state is a dict) is read
    state = torch.load(src, weights_only=False)
    state['message_hub'] = {'log_scalars': {}, 'runtime_info': {'epoch': 12}}
    torch.save(state, src)
    final, count = publish_checkpoint(src, tmp_path / 'out' / 'model.pth')
    digest = hashlib.sha256(final.read_bytes()).hexdigest()
    assert final.name == f'model-{digest[:8]}.pth' and count == 2
    assert not (tmp_path / 'out' / 'model.pth').exists()
    # torch alone, in a fresh interpreter without evit_mm's allowlist, loads it as weights
    code = (f'import torch; c = torch.load({str(final)!r}, weights_only=True); '
            'print(sorted(c), sorted(c["meta"]), c["meta"]["dataset_meta"]["classes"])')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['meta', 'state_dict'] ['cfg', 'dataset_meta', 'epoch'] ('circle', 'square')"
    published = torch.load(final, weights_only=True)
    assert published['state_dict'].keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(published['state_dict'][key], value)
        assert published['state_dict'][key].is_contiguous()


def test_bad_sources_and_names(tmp_path):
    empty = tmp_path / 'no_weights.pth'
    torch.save({'meta': {'epoch': 1}}, empty)
    assert run(main, [str(empty), str(tmp_path / 'model.pth')]).startswith(
        f"error: {empty}: no tensors found in the checkpoint; top-level keys: ['meta']")
    assert run(main, [str(tmp_path / 'missing.pth'), str(tmp_path / 'model.pth')]).startswith(
        'error: checkpoint not found')
    for dst in (tmp_path / 'model.safetensors', empty):  # usage errors, as the function's ValueErrors below
        with pytest.raises(SystemExit) as stop:
            main([str(empty), str(dst)])
        assert stop.value.code == 2
    with pytest.raises(ValueError, match="give a name ending in .pth, got '.*model.pt'"):
        publish_checkpoint(empty, tmp_path / 'model.pt')
    with pytest.raises(ValueError, match='is the source checkpoint: publishing there would replace the training'):
        publish_checkpoint(empty, empty)
    assert torch.load(empty, weights_only=True) == {'meta': {'epoch': 1}}  # left as it was

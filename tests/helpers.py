"""Helpers shared by the tests."""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights *and* BatchNorm statistics, so that BN-init-0 branches and fusion are exercised.

    BatchNorm scales are kept small (about 0.3) so that activations stay O(1) through deep residual stacks,
    as in a trained model; otherwise float32 round-off grows with the activations and hides real errors."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            if name.endswith('running_var'):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.5 + 0.5)
            elif name.endswith(('bn.weight', 'bn.bias', 'running_mean')):
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.1 + (0.3 if name.endswith('weight') else 0))
            else:
                fan_in = tensor[0].numel() if tensor.dim() > 1 else 1
                tensor.copy_(torch.randn(tensor.shape, generator=gen) / fan_in ** 0.5)
    return model.eval()


def load_tool(name: str) -> ModuleType:
    """The script ``tools/<name>.py`` loaded as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def logged_metrics(work_dir: Path, key: str) -> dict:
    """The first record holding ``key`` in the JSON logs mmengine wrote under ``work_dir`` (any depth)."""
    for path in sorted(work_dir.glob('**/*.json')):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if key in record:
                return record
    raise AssertionError(f'no {key!r} in the logs under {work_dir}')


#: Marks a test (or a parameter) that needs a GPU: it skips, saying why, where none is present.
REQUIRES_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device on this machine')

#: Devices the device-parametrized tests run on.
DEVICES = ['cpu', pytest.param('cuda', marks=REQUIRES_CUDA)]


def _cpu_autocast_takes_float16() -> bool:
    try:
        with torch.autocast('cpu', dtype=torch.float16):
            return True
    except RuntimeError:  # torch < 2.3: "AutocastCPU only support Bfloat16"
        return False


def _cpu_fused_adamw() -> bool:
    try:
        torch.optim.AdamW([torch.zeros(1, requires_grad=True)], fused=True)
        return True
    except RuntimeError:  # torch < 2.4: fused optimizers on GPUs only
        return False


#: torch 2.1's profiler leaves some nested operators without a parent and stamps them in whole microseconds, so
#: counts of top-level operators are approximate there (off by one now and then, by timing)
REQUIRES_EXACT_OPERATOR_NESTING = pytest.mark.skipif(
    torch.__version__ < '2.2', reason=f'torch {torch.__version__}: the profiler does not record every nesting')
CPU_AUTOCAST_FLOAT16 = _cpu_autocast_takes_float16()
REQUIRES_CPU_AUTOCAST_FLOAT16 = pytest.mark.skipif(
    not CPU_AUTOCAST_FLOAT16, reason=f'torch {torch.__version__}: CPU autocast takes bfloat16 only')
CPU_FUSED_ADAMW = _cpu_fused_adamw()
REQUIRES_CPU_FUSED_ADAMW = pytest.mark.skipif(
    not CPU_FUSED_ADAMW, reason=f'torch {torch.__version__}: no fused AdamW on the CPU')


class OpCalls(TorchDispatchMode):
    """Inside ``with OpCalls(op, ...) as seen``, ``seen.calls`` collects ``(op, args)`` of every call of those aten
    operators that reaches dispatch (forward and backward)."""

    def __init__(self, *ops) -> None:
        super().__init__()
        self.ops = ops
        self.calls: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.ops:
            self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


def hub_cache(root: Path, repo_id: str, files: dict, ref: str = 'main') -> Path:
    """A Hugging Face Hub cache as ``huggingface_hub`` lays it out: ``models--ORG--NAME/refs/REF`` holding a commit
    hash, the files (``{name: writer(path)}``) under ``snapshots/COMMIT/``."""
    commit = hashlib.sha1(ref.encode()).hexdigest()
    repo = root / ('models--' + repo_id.replace('/', '--'))
    (repo / 'refs').mkdir(parents=True, exist_ok=True)
    (repo / 'refs' / ref).write_text(commit)
    snapshot = repo / 'snapshots' / commit
    snapshot.mkdir(parents=True)
    for name, write in files.items():
        write(snapshot / name)
    return root

"""Shared fixtures. The golden data lives in ../shared/golden beside the checkout (never in the project)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get('EVIT_MM_GOLDEN', REPO_ROOT.parent / 'shared' / 'golden'))


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope='session')
def golden_dir() -> Path:
    if not (GOLDEN_DIR / 'efficientvit_m0_golden.pt').is_file():
        pytest.skip(f'golden data (official EfficientViT outputs) not found at {GOLDEN_DIR}; it sits in '
                    '../shared/golden beside a developer or CI checkout, or set EVIT_MM_GOLDEN')
    return GOLDEN_DIR


@pytest.fixture(autouse=True)
def keep_freed_memory_calls(monkeypatch) -> list:
    """Calls of ``keep_freed_memory`` by the tools' ``--keep-freed-memory`` option, recorded instead of made, in every
    test: the real setting would last for the whole test process, and ``tools/train.py`` and ``tools/test.py`` make it
    by default in CPU runs. Each call returns the settings the real one would report."""
    from evit_mm.benchmark import allocator_option
    from evit_mm.deploy.allocator import INT_MAX, AllocatorSettings
    calls = []
    monkeypatch.setattr(allocator_option, 'keep_freed_memory',
                        lambda: calls.append(1) or AllocatorSettings(1 << 30, INT_MAX))
    return calls


@pytest.fixture
def offline_hub(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face Hub cache in ``tmp_path`` with the hub offline, as ``HF_HUB_CACHE`` and
    ``HF_HUB_OFFLINE=1`` would set them (fill it with ``tests.helpers.hub_cache``); nothing reaches the network."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_CACHE', str(tmp_path / 'hub'))
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    return tmp_path / 'hub'


@pytest.fixture
def cuda_devices(monkeypatch):
    """``cuda_devices(n)`` makes ``torch.cuda`` report ``n`` devices, for tests that only parse command lines naming
    ``--device cuda`` (the benchmark tools check the device when they parse it)."""
    def pretend(count: int) -> None:
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: count > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
    return pretend

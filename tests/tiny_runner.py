"""A tiny mmengine training setup for resume tests: a linear model, 8 samples, batch 2 (4 iterations/epoch)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn
from torch.utils.data import Dataset


class TinyRegressor(BaseModel):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, y=None, mode='tensor'):
        out = self.linear(torch.stack(x) if isinstance(x, list) else x).squeeze(-1)
        if mode == 'loss':
            target = torch.stack(y) if isinstance(y, list) else y
            return {'loss': ((out - target) ** 2).mean()}
        return out


class TinyData(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict:
        return dict(x=torch.tensor([float(i), 1.0]), y=torch.tensor(0.5 * i))


class RecordingHook(Hook):
    """Records the iterations a run executes and the optimizer state when training starts."""

    def __init__(self) -> None:
        self.iters: list[int] = []
        self.optimizer_state_at_start: dict | None = None

    def before_train(self, runner) -> None:
        self.optimizer_state_at_start = copy.deepcopy(runner.optim_wrapper.optimizer.state_dict())

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.iters.append(runner.iter)


def build_runner(work_dir: Path, max_epochs: int, resume: bool = False) -> tuple[Runner, RecordingHook]:
    hook = RecordingHook()
    runner = Runner(
        model=TinyRegressor(), work_dir=str(work_dir), experiment_name=f'tiny_{max_epochs}_{resume}',
        train_dataloader=dict(dataset=TinyData(), batch_size=2, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=True)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=[dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3),
                         dict(type='MultiStepLR', milestones=[1], by_epoch=True)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[hook], default_scope='mmengine', randomness=dict(seed=0), resume=resume)
    return runner, hook

"""The fast paths with their state (cached folded weights, bias tables, prepacked weights, the reused input buffer,
GEMM convs) against the reference path, over random sequences of what a model goes through: evaluation, training
steps with an optimizer, deployment, loading weights, weights changed in place, input sizes that change.

After every step the reference is given the fast model's weights and statistics anew, so a stale cache in the fast
model shows as a difference. In float64 every output, gradient and running statistic must agree to 1e-7 (the
paths compute the same values, in another order); float32 compares evaluation and deployment only (where the CPU
kernels' prepacked and fused paths run: they take float32 only), to 1e-4.
"""
from __future__ import annotations

import copy
import random

import pytest
import torch

from evit_mm.models import EfficientViT
from tests.helpers import CPU_FUSED_ADAMW, randomize_

STEPS = ('eval', 'train', 'train', 'tune', 'deploy', 'load', 'in_place')


def _relative_error(got: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    return ((got.double() - expected.double()).norm() / max(expected.double().norm().item(), floor)).item()


def _last_side(side: int) -> int:
    return -(-side // 64)  # stride of the last stage


class Scenario:
    """One random model, its reference copy, and the checks."""

    def __init__(self, seed: int, dtype: torch.dtype, fused_optimizer: bool, with_cp: bool,
                 drop_path_rate: float) -> None:
        self.rng = rng = random.Random(seed)
        self.dtype = dtype
        settings = dict(arch=rng.choice(['m0', 'm1', 'm2']), window_size=rng.choice([7, (7, 7, 4), 5]),
                        frozen_stages=rng.choice([-1, 0, 1]), norm_eval=rng.random() < 0.25,
                        drop_path_rate=drop_path_rate, with_cp=with_cp)
        self.fast = randomize_(EfficientViT(**settings, gemm_convs=rng.choice([None, True, False])), seed).to(dtype)
        self.reference = EfficientViT(**settings, fast_attention=False, channels_last=False, gemm_convs=False,
                                      fold_eval_bn=False).to(dtype)
        self.reference.reuse_input_buffer = False
        self.optimizer = torch.optim.AdamW([p for p in self.fast.parameters() if p.requires_grad], lr=1e-3,
                                           fused=fused_optimizer)  # fused: in place, without version bumps
        self.sizes = [(rng.randint(1, 3), rng.randint(16, 150), rng.randint(16, 150)) for _ in range(2)]
        self.sizes += [(rng.randint(1, 2), rng.randint(100, 230), rng.randint(100, 230)) for _ in range(2)]
        self.sync()

    def sync(self) -> None:
        self.reference.load_state_dict(self.fast.state_dict())

    def image(self) -> torch.Tensor:
        batch, height, width = self.rng.choice(self.sizes)
        return torch.randn(batch, 3, height, width, dtype=self.dtype)

    def assert_close(self, got, expected, what: str) -> None:
        tolerance = 1e-7 if self.dtype == torch.float64 else 1e-4
        for a, b in zip(got, expected, strict=True):
            assert _relative_error(a, b) < tolerance, f'{what}: {_relative_error(a, b):.2e}'

    def eval_step(self, x: torch.Tensor) -> None:
        if self.fast.training:  # only then: every mode switch drops the caches, and staleness would hide
            self.fast.eval()
        self.reference.eval()
        with torch.no_grad():
            expected = self.reference(x)
            self.assert_close(self.fast(x), expected, f'eval {tuple(x.shape)}')
        with torch.inference_mode():  # the same shape again: prepacked weights, cached tables
            self.assert_close(self.fast(x), expected, f'eval again {tuple(x.shape)}')

    def train_step(self, x: torch.Tensor, batch_norm_training: bool = True) -> None:
        """A training step; ``batch_norm_training=False`` fine-tunes in eval mode (BatchNorms frozen), where the
        eval-mode caches must step aside while the weights train and the fused optimizer updates them in place."""
        if self.fast.training != batch_norm_training:  # as a user would: no switch that would drop the caches
            self.fast.train(batch_norm_training)
        self.reference.train(batch_norm_training)
        check = self.dtype == torch.float64 and (
            not batch_norm_training or x.shape[0] * _last_side(x.shape[2]) * _last_side(x.shape[3]) >= 4)
        outputs = []
        seed = self.rng.randrange(2 ** 31)
        for model in (self.fast, self.reference):
            torch.manual_seed(seed)  # the same paths dropped in both (drop path)
            features = model(x)
            sum(f.square().mean() for f in features).backward()
            outputs.append(features)
        if check:  # (BatchNorm over fewer values per channel is too ill-conditioned for 1e-7)
            self.assert_close(*outputs, f'train {tuple(x.shape)}')
            got, expected = ({n: p.grad for n, p in m.named_parameters() if p.grad is not None}
                             for m in (self.fast, self.reference))
            assert got.keys() == expected.keys()
            total = torch.cat([g.flatten() for g in expected.values()]).norm().item()
            for name, grad in got.items():
                # relative to the gradient, or to all of them where it is ~0 in theory (a BN bias before a BN)
                assert _relative_error(grad, expected[name], 1e-6 * total) < 1e-7, f'gradient of {name}'
            self.assert_close([b for b in self.fast.buffers() if b.is_floating_point()],
                              [b for b in self.reference.buffers() if b.is_floating_point()], 'running statistics')
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.reference.zero_grad()
        self.sync()

    def deploy_step(self, x: torch.Tensor) -> None:
        deployed = copy.deepcopy(self.fast).eval().switch_to_deploy(fused_kernels=self.rng.choice([None, True, False]))
        self.reference.eval()
        with torch.inference_mode():
            expected = self.reference(x)
            for _ in range(2):
                self.assert_close(deployed(x), expected, f'deployed {tuple(x.shape)}')

    def load_step(self) -> None:
        state = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() and 'running_var' not in k else v
                 for k, v in self.fast.state_dict().items()}
        self.fast.load_state_dict(state)

    def in_place_step(self) -> None:
        with torch.no_grad():
            for p in self.fast.parameters():
                p.add_(0.01 * torch.randn_like(p))

    def new_weights_step(self, change) -> None:
        """Weights changed without a mode switch, between two evaluations of one input: whatever the first cached
        (folded, packed for that shape) must not be served for the second."""
        x = self.image()
        self.eval_step(x)
        change()
        self.sync()
        self.eval_step(x)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            step = self.rng.choice(STEPS)
            if step == 'train':
                self.train_step(self.image())
            elif step == 'tune':
                x = self.image()
                self.eval_step(x)
                self.train_step(x, batch_norm_training=False)
                self.eval_step(x)
            elif step in ('eval', 'deploy'):
                (self.eval_step if step == 'eval' else self.deploy_step)(self.image())
            else:
                self.new_weights_step(self.load_step if step == 'load' else self.in_place_step)
        self.eval_step(self.image())


@pytest.mark.parametrize(('seed', 'dtype', 'fused_optimizer', 'with_cp', 'drop_path_rate'), [
    (0, torch.float64, True, False, 0.0),
    (1, torch.float64, False, True, 0.1),
    (2, torch.float64, True, True, 0.1),
    (3, torch.float64, False, False, 0.0),
    (0, torch.float32, True, False, 0.1),
    (1, torch.float32, False, False, 0.0),
])
def test_fast_paths_follow_the_reference(seed, dtype, fused_optimizer, with_cp, drop_path_rate):
    if fused_optimizer and not CPU_FUSED_ADAMW:
        pytest.skip(f'torch {torch.__version__}: no fused AdamW on the CPU')
    Scenario(seed, dtype, fused_optimizer, with_cp, drop_path_rate).run(steps=8)

"""evit_mm's EfficientViT backbone against timm's ``efficientvit_m*`` (features_only), same weights."""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import timm
import torch
from torch import nn

from ..checkpoint import to_backbone_state_dict
from ..models import EfficientViT
from .timing import time_interleaved


def fuse_timm_efficientvit(model: nn.Module) -> nn.Module:
    """Apply to a timm EfficientViT the same Conv+BN fusion as ``EfficientViT.switch_to_deploy`` (in place):
    every child with timm's ``fuse()`` (``ConvNorm``, ``NormLinear``) is replaced by the module it returns."""
    for name, child in list(model.named_children()):
        if hasattr(child, 'fuse') and callable(child.fuse):
            setattr(model, name, child.fuse())
        else:
            fuse_timm_efficientvit(child)
    return model


def build_pair(arch: str, img_size: int = 224) -> tuple[nn.Module, nn.Module]:
    """timm ``efficientvit_{arch}`` (features_only, created at ``img_size``) and evit_mm's backbone with the
    same weights and the same window geometry, both in eval mode."""
    reference = timm.create_model(f'efficientvit_{arch}', pretrained=False, img_size=img_size)
    windows = tuple(stage.blocks[0].mixer.m.attn.resolution for stage in reference.stages)
    ours = EfficientViT(arch, window_size=windows)
    ours.load_state_dict(to_backbone_state_dict(reference.state_dict()))
    features = timm.create_model(f'efficientvit_{arch}', pretrained=False, img_size=img_size, features_only=True)
    # timm's FeatureListNet flattens the top-level modules: patch_embed.conv1 -> patch_embed_conv1, stages.0 -> stages_0
    renamed = {re.sub(r'^(patch_embed|stages)\.(\w+)', r'\1_\2', k): v
               for k, v in reference.state_dict().items() if not k.startswith('head.')}
    features.load_state_dict(renamed)
    return ours.eval(), features.eval()


@dataclass
class Row:
    arch: str
    shape: tuple[int, int, int]  # batch, height, width
    fused: bool | str  # True/False, or 'train' for a training step (forward + backward)
    ours: float  # images/s
    timm: float

    @property
    def ratio(self) -> float:
        return self.ours / self.timm


def _training_step(model: nn.Module, x: torch.Tensor):
    def step() -> None:
        model.zero_grad(set_to_none=True)
        sum(f.float().square().mean() for f in model(x)).backward()
    return step


def compare(arch: str = 'm4', shapes: tuple[tuple[int, int, int], ...] = ((16, 224, 224), (1, 800, 1344)),
            warmup: int = 3, repeats: int = 10, train: bool = False) -> list[Row]:
    """Images/s of evit_mm and timm, unfused and fused (and a training step, forward + backward, when
    ``train``), at each ``(batch, height, width)``, interleaved."""
    ours, reference = build_pair(arch)
    variants = {False: (ours, reference),
                True: (copy.deepcopy(ours).switch_to_deploy(), fuse_timm_efficientvit(copy.deepcopy(reference)))}
    rows = []
    for batch, height, width in shapes:
        x = torch.randn(batch, 3, height, width)
        for fused, (a, b) in variants.items():
            with torch.no_grad():  # same weights must give the same features before any timing counts
                for u, v in zip(a(x), b(x), strict=True):
                    torch.testing.assert_close(u, v, atol=1e-4, rtol=1e-3)
            timings = time_interleaved({'ours': lambda: a(x), 'timm': lambda: b(x)}, batch, warmup, repeats)
            rows.append(Row(arch, (batch, height, width), fused, timings['ours'].images_per_second,
                            timings['timm'].images_per_second))
        if train:
            ours.train(), reference.train()
            timings = time_interleaved({'ours': _training_step(ours, x), 'timm': _training_step(reference, x)},
                                       batch, warmup, repeats, grad=True)
            ours.eval(), reference.eval()
            rows.append(Row(arch, (batch, height, width), 'train', timings['ours'].images_per_second,
                            timings['timm'].images_per_second))
    return rows


def format_rows(rows: list[Row]) -> str:
    lines = ['| arch | input (BxHxW) | fused / train | evit_mm img/s | timm img/s | ratio |', '|---|---|---|---|---|---|']
    for r in rows:
        lines.append(f'| {r.arch} | {r.shape[0]}x{r.shape[1]}x{r.shape[2]} | {r.fused if isinstance(r.fused, str) else ("yes" if r.fused else "no")} | '
                     f'{r.ours:.1f} | {r.timm:.1f} | {r.ratio:.2f} |')
    return '\n'.join(lines)

"""One training iteration of a target, for the throughput tool's ``train`` mode: what a training run spends per
iteration apart from loading data (preprocessing, forward pass, losses, backward pass, optimizer step), on a
synthetic batch with ground truth.

Config targets run mmengine's own ``model.train_step`` with the optimizer wrapper their config builds (optimizer,
parameter-wise settings, gradient clipping) on the model as ``tools/train.py`` prepares it (on the CPU, RoIAlign as
matrix products), so the iteration is the one ``tools/train.py`` runs; in float16 or bfloat16, the wrapper that
``tools/train.py --amp`` builds (autocast around the forward pass, loss scaling on GPUs). Backbones train on the mean
of their outputs with AdamW, the forward pass under autocast where asked. Each runs on a copy of the target, which
keeps its weights and BatchNorm statistics for the other modes of the same run.
"""
from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from mmengine.logging import MMLogger
from torch import nn

from ..tools.cpu_roi_align import use_separable_roi_align_on_cpu
from ..tools.preflight import PreflightError, num_classes_of_model
from .inputs import synthetic_batch
from .precision import autocast
from .targets import Target, mmengine_info_silenced


def num_classes_of(target: Target) -> int:
    """The most classes the config's heads predict (:func:`~evit_mm.tools.preflight.num_classes_of_model`)."""
    counts = [value for _, value in num_classes_of_model(target.cfg.model)]
    if not counts:
        raise PreflightError(f'{target.name}: no head of the config gives num_classes: mode train cannot make its '
                             'labels')
    return max(counts)


def training_iteration(target: Target, batch: int, height: int, width: int, device: torch.device,
                       deployed: bool, compiled: bool, dtype: str = 'fp32') -> Callable[[], object]:
    """A call that runs one training iteration of a copy of ``target`` on a fixed synthetic batch, in ``dtype``
    (``fp32``, or mixed precision ``fp16`` / ``bf16``: the call sets up autocast itself, for the forward pass only).

    Raises:
        PreflightError: For a deployed or compiled target (BatchNorms folded; the copy of a compiled model), or a
            mixed precision ``tools/train.py`` does not train in on that device, naming the fix.
    """
    if deployed:
        raise PreflightError(f'{target.name}: mode train measures the model as it trains, not deployed (its '
                             'BatchNorms are folded): list the target without --deploy or @deploy for this mode')
    if compiled:
        raise PreflightError(f'{target.name}: mode train does not run on a torch.compile-d backbone; measure it '
                             'without --compile / --compile-mode')
    if dtype == 'fp16' and device.type == 'cpu':
        raise PreflightError(f'{target.name}: mode train with --dtype fp16 on the CPU: training there runs in float32 '
                             'or bfloat16 (tools/train.py --amp: bfloat16 autocast, no loss scaler); use --dtype bf16 '
                             'or fp32')
    model = training_copy(target)
    if target.kind == 'backbone':
        return _backbone_iteration(model, torch.randn(batch, 3, height, width, device=device), dtype)
    from mmengine.optim import build_optim_wrapper
    with mmengine_info_silenced():
        optim_wrapper = build_optim_wrapper(model, optim_wrapper_config(target, device, dtype))
    packed = synthetic_batch(target.kind, batch, height, width, num_classes_of(target), ground_truth=True)
    return lambda: model.train_step(packed, optim_wrapper)


def training_copy(target: Target) -> nn.Module:
    """A copy of the target's model in training mode, prepared as ``tools/train.py`` prepares a model: on the CPU,
    mmcv's RoIAlign layers computed as matrix products (:mod:`~evit_mm.tools.cpu_roi_align`)."""
    model = copy.deepcopy(target.model).train()
    with mmengine_info_silenced():  # its log line would land in the tool's table
        use_separable_roi_align_on_cpu(model, MMLogger.get_current_instance())
    return model


def optim_wrapper_config(target: Target, device: torch.device, dtype: str) -> dict:
    """The config's optimizer wrapper; in mixed precision, the one ``tools/train.py --amp`` builds on ``device``
    (:func:`~evit_mm.tools.config_options.enable_amp`), in bfloat16 on a GPU too."""
    from mmengine.config import Config

    from ..tools.config_options import enable_amp
    cfg = Config(dict(optim_wrapper=copy.deepcopy(target.cfg.optim_wrapper)))
    if dtype != 'fp32':
        enable_amp(cfg, device.type)
        if device.type != 'cpu' and dtype == 'bf16':
            cfg.optim_wrapper.dtype = 'bfloat16'
    return cfg.optim_wrapper


def _backbone_iteration(model: nn.Module, images: torch.Tensor, dtype: str) -> Callable[[], object]:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

    def step() -> None:
        with autocast(images.device.type, dtype):
            loss = sum(feature.float().mean() for feature in model(images))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step

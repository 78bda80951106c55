"""The train and test tools' CPU speed-up for two-stage detectors: mmcv's RoIAlign as matrix products."""
from __future__ import annotations

from torch import nn

from ..models.roi_align import convert_roi_aligns


def use_separable_roi_align_on_cpu(model: nn.Module, logger) -> int:
    """If ``model`` runs on the CPU, replace its mmcv ``RoIAlign`` layers with
    :class:`~evit_mm.models.roi_align.SeparableRoIAlign` (forward and backward as small GEMMs on the channels-last
    maps, same values up to float rounding; mmcv's single-threaded kernel took more than half of a Mask R-CNN
    training step). On a GPU nothing changes. Returns how many layers were replaced."""
    parameter = next(model.parameters(), None)
    if parameter is None or parameter.device.type != 'cpu':
        return 0
    replaced = convert_roi_aligns(model)
    if replaced:
        logger.info(f'{replaced} RoIAlign layers run as matrix products on the CPU (evit_mm SeparableRoIAlign; '
                    "mmcv's kernel on GPUs)")
    return replaced

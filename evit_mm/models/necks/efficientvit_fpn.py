"""FPN for EfficientViT's coarse pyramid (strides 16, 32, 64), with transposed convs for finer levels.

EfficientViT has no stride-4/8 stage. As in the official downstream code (Cream/EfficientViT/downstream), an
mmdet FPN runs over the three stages and ``num_extra_trans_convs`` 2x2 stride-2 transposed convolutions are
stacked on its finest output: one gives RetinaNet's stride-8 level, two give Mask R-CNN's stride-4 level.
"""
from __future__ import annotations

import torch
from mmdet.models.necks import FPN
from torch import nn

from ...registry import register_model


@register_model
class EfficientViTFPN(FPN):
    """mmdet's FPN plus upsampling levels below the backbone's finest stride.

    Args:
        in_channels: Channels of each backbone output (``EfficientViT.out_channels``).
        out_channels: Channels of every pyramid level.
        num_outs: Levels returned in total, the transposed-conv levels included.
        num_extra_trans_convs: Levels added below the finest input, each at half the stride of the next
            (2x2 stride-2 ``ConvTranspose2d``). Defaults to 1 (RetinaNet: strides 8-128 from 16/32/64).
        **kwargs: Passed to :class:`mmdet.models.necks.FPN` (``add_extra_convs``, ``start_level``, ...).
    """

    def __init__(self, in_channels: list[int], out_channels: int, num_outs: int,
                 num_extra_trans_convs: int = 1, **kwargs) -> None:
        if not 0 <= num_extra_trans_convs < num_outs:
            raise ValueError(f'num_extra_trans_convs must be in [0, num_outs={num_outs}), '
                             f'got {num_extra_trans_convs}')
        super().__init__(in_channels, out_channels, num_outs - num_extra_trans_convs, **kwargs)
        self.num_levels = num_outs  # FPN's own ``num_outs`` (used by its forward) excludes the upsampled levels
        self.num_extra_trans_convs = num_extra_trans_convs
        self.trans_convs = nn.ModuleList(
            nn.ConvTranspose2d(out_channels, out_channels, kernel_size=2, stride=2)
            for _ in range(num_extra_trans_convs))

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        outs = list(super().forward(inputs))
        for trans_conv in self.trans_convs:
            outs.insert(0, trans_conv(outs[0]))
        return tuple(outs)

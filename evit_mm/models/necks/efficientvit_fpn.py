"""FPN for EfficientViT's coarse pyramid (strides 16, 32, 64), with transposed convs for finer levels.

EfficientViT has no stride-4/8 stage. The official downstream code (Cream/EfficientViT/downstream,
``efficientvit_fpn.py``) runs an mmdet FPN over the three stages and grows ``num_extra_trans_convs`` finer levels
from the finest lateral after the top-down pass: a chain of 2x2 stride-2 transposed convolutions, each level then
refined by its own 3x3 convolution. One gives RetinaNet's stride-8 level, two give Mask R-CNN's stride-4 level.
This module computes exactly that, with the official parameter names, so the official COCO checkpoints load.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from mmcv.cnn import ConvModule
from mmdet.models.necks import FPN
from torch import nn

from ...registry import register_model
from ..arguments import is_int


@register_model
class EfficientViTFPN(FPN):
    """mmdet's FPN plus levels below the backbone's finest stride, as in the official EfficientViT downstream code.

    The finer levels come from the finest lateral (after the top-down pass), not from an FPN output: level ``k``
    (``k = 1 .. num_extra_trans_convs``, stride ``s / 2**k`` for the finest input stride ``s``) is
    ``extra_trans_convs[k - 1]`` applied to level ``k - 1`` (level 0: the lateral), and its output is that level
    refined by a 3x3 conv. The official code indexes those refining convs from the finest level down
    (``extra_fpn_convs[0]`` refines the finest), the reverse of the transposed convs; kept, so that its checkpoints
    (Mask R-CNN: two levels) load with their meaning.

    Args:
        in_channels: Channels of each backbone output (``EfficientViT.out_channels``).
        out_channels: Channels of every pyramid level.
        num_outs: Levels returned in total, the transposed-conv levels included.
        num_extra_trans_convs: Levels added below the finest input (2x2 stride-2 transposed convs with a bias, then
            a 3x3 conv). Defaults to 1 (RetinaNet: strides 8-128 from 16/32/64).
        no_norm_on_lateral: No normalisation on the laterals, nor on the transposed convs (as the official code).
        conv_cfg: Config of the 3x3 and lateral convs (mmdet's FPN); the transposed convs are always ``deconv``.
        norm_cfg: Normalisation after every conv. Defaults to None (none, as in the official configs).
        act_cfg: Activation after every conv. Defaults to None.
        **kwargs: Passed to :class:`mmdet.models.necks.FPN` (``add_extra_convs``, ``start_level``, ...).
    """

    def __init__(self, in_channels: list[int], out_channels: int, num_outs: int,
                 num_extra_trans_convs: int = 1, no_norm_on_lateral: bool = False, conv_cfg: dict | None = None,
                 norm_cfg: dict | None = None, act_cfg: dict | None = None, **kwargs) -> None:
        if not is_int(num_extra_trans_convs) or not 0 <= num_extra_trans_convs < num_outs:
            raise ValueError(f'num_extra_trans_convs must be an int in [0, num_outs={num_outs}), '
                             f'got {num_extra_trans_convs!r}')
        num_extra_trans_convs = int(num_extra_trans_convs)
        self._check_levels(len(in_channels), num_outs, num_extra_trans_convs, kwargs.get('start_level', 0),
                           kwargs.get('end_level', -1))
        super().__init__(in_channels, out_channels, num_outs - num_extra_trans_convs,
                         no_norm_on_lateral=no_norm_on_lateral, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                         act_cfg=act_cfg, **kwargs)
        self.num_extra_trans_convs = num_extra_trans_convs
        self.extra_trans_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 2, stride=2, conv_cfg=dict(type='deconv'),
                       norm_cfg=None if no_norm_on_lateral else norm_cfg, act_cfg=act_cfg, inplace=False)
            for _ in range(num_extra_trans_convs))
        self.extra_fpn_convs = nn.ModuleList(
            ConvModule(out_channels, out_channels, 3, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                       act_cfg=act_cfg, inplace=False)
            for _ in range(num_extra_trans_convs))

    @staticmethod
    def _check_levels(num_ins: int, num_outs: int, num_extra_trans_convs: int, start_level: int,
                      end_level: int) -> None:
        """Raise where mmdet's FPN would assert: the levels it takes (``start_level`` to ``end_level``, inclusive;
        -1: the last) must exist, and ``num_outs`` less the transposed-conv levels must cover them: at least them
        where the FPN ends at the last input (it adds coarser levels), exactly them where it ends earlier."""
        last = num_ins - 1
        if not 0 <= start_level <= last or not (end_level == -1 or start_level <= end_level <= last):
            raise ValueError(f'start_level={start_level} and end_level={end_level} must index the {num_ins} '
                             f'backbone levels (0 <= start_level <= end_level <= {last}; end_level=-1: the last)')
        ends_at_last = end_level in (-1, last)
        levels = (last if ends_at_last else end_level) - start_level + 1
        fpn_outs = num_outs - num_extra_trans_convs
        if fpn_outs < levels or (fpn_outs != levels and not ends_at_last):
            need = f'>= {levels + num_extra_trans_convs}' if ends_at_last else f'== {levels + num_extra_trans_convs}'
            raise ValueError(f'num_outs={num_outs} does not fit: the {levels} backbone levels from start_level to '
                             f'end_level and the {num_extra_trans_convs} transposed-conv levels need num_outs {need}'
                             + ('' if ends_at_last else ' (no coarser levels are added where end_level is not the '
                                                        'last input)'))

    def forward(self, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """Pyramid levels, finest first: the transposed-conv levels, then mmdet FPN's.

        Written out rather than calling ``FPN.forward``: the transposed convs read the finest lateral after the
        top-down pass, which ``FPN.forward`` keeps to itself.
        """
        if len(inputs) != len(self.in_channels):
            raise ValueError(f'EfficientViTFPN expects {len(self.in_channels)} feature maps, got {len(inputs)}')
        channels = [x.shape[1] for x in inputs]
        if channels != list(self.in_channels):  # torch would name a conv weight's size, not the config key
            raise ValueError(f'EfficientViTFPN was built for maps of {list(self.in_channels)} channels, got '
                             f"{channels}: set the neck's in_channels to the backbone's out_channels")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        for i in range(len(laterals) - 1, 0, -1):  # top-down, as mmdet's FPN
            size = {} if 'scale_factor' in self.upsample_cfg else dict(size=laterals[i - 1].shape[2:])
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], **size, **self.upsample_cfg)
        finer = [laterals[0]]
        for trans_conv in self.extra_trans_convs:
            finer.append(trans_conv(finer[-1]))
        finer = finer[:0:-1]  # the transposed-conv levels, finest first
        extra_outs = [conv(level) for conv, level in zip(self.extra_fpn_convs, finer)]
        outs = [self.fpn_convs[i](lateral) for i, lateral in enumerate(laterals)]
        return tuple(extra_outs + outs + self._coarser_levels(inputs, laterals, outs))

    def _coarser_levels(self, inputs: tuple[torch.Tensor, ...], laterals: list[torch.Tensor],
                        outs: list[torch.Tensor]) -> list[torch.Tensor]:
        """mmdet FPN's levels above the backbone's coarsest: max pooling, or stride-2 convs (RetinaNet)."""
        extra: list[torch.Tensor] = []
        count = self.num_outs - len(outs)
        if count <= 0:
            return extra
        if not self.add_extra_convs:
            for _ in range(count):
                extra.append(F.max_pool2d((extra or outs)[-1], 1, stride=2))
            return extra
        source = {'on_input': inputs[self.backbone_end_level - 1], 'on_lateral': laterals[-1],
                  'on_output': outs[-1]}[self.add_extra_convs]
        extra.append(self.fpn_convs[len(outs)](source))
        for i in range(len(outs) + 1, self.num_outs):
            extra.append(self.fpn_convs[i](F.relu(extra[-1]) if self.relu_before_extra_convs else extra[-1]))
        return extra

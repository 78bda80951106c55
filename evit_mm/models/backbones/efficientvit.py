"""EfficientViT backbone (M0-M5) for OpenMMLab 2.0.

Liu et al., "EfficientViT: Memory Efficient Vision Transformer with Cascaded Group Attention", CVPR 2023,
arXiv:2305.07027. Official code: github.com/microsoft/Cream (EfficientViT/). The parameter tree matches timm's
``efficientvit_msra``; :mod:`evit_mm.checkpoint` converts official checkpoints to it.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.utils.checkpoint as cp
from mmengine.logging import print_log
from mmengine.model import BaseModule
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ...checkpoint import load_pretrained, pretrained_checkpoint, rename_official_backbone_keys
from ...compat import mmcv_ops
from ...registry import register_model
from ..arguments import is_int
from ..attention import LocalWindowAttention
from ..eager_kernels import OWN_KERNEL_CPUS, own_kernel_measured_faster
from ..fused_conv import FusedConv2d
from ..grad_layout import grad_in_layout
from ..input_buffer import channels_last_image
from ..layers import (BNLinear, ConvBN, ConvFFN, PatchEmbed, PatchMerging, Residual, depthwise_residual,
                      ffn_residual)
from .image_checks import ImageInputError, check_image_dtype_and_device, check_image_layout


def _integer(key: str, value: Any) -> int:
    if not is_int(value):
        raise TypeError(f'Custom EfficientViT arch: {key} must be an int, got {value!r}')
    return int(value)


def _integers(key: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f'Custom EfficientViT arch: {key} must be a list or tuple of ints, got {value!r}')
    return tuple(_integer(key, item) for item in value)


@dataclass(frozen=True)
class ArchSpec:
    """One EfficientViT variant (paper Table 1 / official model zoo)."""

    embed_dims: tuple[int, ...]
    depths: tuple[int, ...]
    num_heads: tuple[int, ...]
    kernels: tuple[int, ...]
    key_dim: int = 16

    @classmethod
    def from_any(cls, arch: str | dict[str, Any] | ArchSpec) -> ArchSpec:
        """Resolve an arch name (case-insensitive, ``m4`` or ``efficientvit_m4``) or a custom dict."""
        if isinstance(arch, ArchSpec):
            return arch
        if isinstance(arch, str):
            name = arch.lower().removeprefix('efficientvit_').removeprefix('efficientvit-')
            if name not in ARCH_SETTINGS:
                raise ValueError(f'Unknown EfficientViT arch {arch!r}; valid choices: {sorted(ARCH_SETTINGS)} '
                                 f'or a dict with keys {cls.required_keys()}')
            return ARCH_SETTINGS[name]
        if not isinstance(arch, dict):
            raise TypeError(f'arch must be a name or a dict, got {type(arch).__name__}')
        missing = set(cls.required_keys()) - set(arch)
        unknown = set(arch) - set(cls.required_keys()) - {'key_dim'}
        if missing or unknown:
            raise ValueError(f'Custom EfficientViT arch: missing keys {sorted(missing)}, unknown keys '
                             f'{sorted(unknown)}; expected {cls.required_keys()} (+ optional key_dim)')
        values: dict[str, Any] = {key: _integers(key, arch[key]) for key in cls.required_keys()}
        if 'key_dim' in arch:
            values['key_dim'] = _integer('key_dim', arch['key_dim'])
        spec = cls(**values)
        spec.validate()
        return spec

    @staticmethod
    def required_keys() -> list[str]:
        return ['embed_dims', 'depths', 'num_heads', 'kernels']

    @property
    def num_stages(self) -> int:
        return len(self.embed_dims)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistency."""
        n = len(self.embed_dims)
        if n == 0 or len(self.depths) != n or len(self.num_heads) != n:
            raise ValueError(f'embed_dims, depths and num_heads need one entry per stage, got '
                             f'{self.embed_dims}, {self.depths}, {self.num_heads}')
        if any(d < 1 for d in self.embed_dims):
            raise ValueError(f'embed_dims must be positive, got {self.embed_dims}')
        if self.embed_dims[0] % 8:
            raise ValueError(f'embed_dims[0] must be divisible by 8 (patch embedding), got {self.embed_dims[0]}')
        for dim, heads in zip(self.embed_dims, self.num_heads):
            if heads < 1 or dim % heads:
                raise ValueError(f'each embed_dim must be divisible by its num_heads, got {dim} and {heads}')
        if len(self.kernels) < max(self.num_heads):
            raise ValueError(f'kernels needs one entry per head ({max(self.num_heads)}), got {self.kernels}')
        if any(k < 1 or k % 2 == 0 for k in self.kernels):
            raise ValueError(f'query kernels must be positive and odd, got {self.kernels}')
        if any(d < 1 for d in self.depths) or self.key_dim < 1:
            raise ValueError(f'depths and key_dim must be positive, got {self.depths}, {self.key_dim}')


# The one arch table. M0's query kernels are (5, 5, 5, 5) as in the official classification code and timm;
# the official downstream file's (7, 5, 3, 3) for M0 is a bug that silently mismatches ImageNet weights.
ARCH_SETTINGS: dict[str, ArchSpec] = {
    'm0': ArchSpec((64, 128, 192), (1, 2, 3), (4, 4, 4), (5, 5, 5, 5)),
    'm1': ArchSpec((128, 144, 192), (1, 2, 3), (2, 3, 3), (7, 5, 3, 3)),
    'm2': ArchSpec((128, 192, 224), (1, 2, 3), (4, 3, 2), (7, 5, 3, 3)),
    'm3': ArchSpec((128, 240, 320), (1, 2, 3), (4, 3, 4), (5, 5, 5, 5)),
    'm4': ArchSpec((128, 256, 384), (1, 2, 3), (4, 4, 4), (7, 5, 3, 3)),
    'm5': ArchSpec((192, 288, 384), (1, 3, 4), (3, 3, 4), (7, 5, 3, 3)),
}

#: Windows of the classification geometry at 224x224 (what the official classifier and timm compute):
#: stage 3 is 4x4 there, so its window is 4.
CLASSIFICATION_WINDOWS = (7, 7, 4)


class EfficientViTBlock(nn.Module):
    """The sandwich layout (paper Fig. 3): DW, FFN, cascaded-group-attention, DW, FFN, each residual."""

    def __init__(self, dim: int, key_dim: int, num_heads: int, window_size: int, kernels: Sequence[int],
                 drop_path: float = 0.0, fast_attention: bool = True) -> None:
        super().__init__()
        self.dw0 = depthwise_residual(dim, drop_path, bn_weight_init=0.0)
        self.ffn0 = ffn_residual(dim, drop_path)
        self.mixer = Residual(
            LocalWindowAttention(dim, key_dim, num_heads, window_size, kernels, fast=fast_attention), drop_path)
        self.dw1 = depthwise_residual(dim, drop_path, bn_weight_init=0.0)
        self.ffn1 = ffn_residual(dim, drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn1(self.dw1(self.mixer(self.ffn0(self.dw0(x)))))


class Downsample(nn.Sequential):
    """Between stages: ``x+DW``, ``x+FFN``, :class:`PatchMerging` (stride 2), ``x+DW``, ``x+FFN``."""

    def __init__(self, in_dim: int, out_dim: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.res1 = nn.Sequential(depthwise_residual(in_dim, drop_path), ffn_residual(in_dim, drop_path))
        self.patchmerge = PatchMerging(in_dim, out_dim)
        self.res2 = nn.Sequential(depthwise_residual(out_dim, drop_path), ffn_residual(out_dim, drop_path))


class EfficientViTStage(nn.Module):
    """An optional :class:`Downsample` followed by ``depth`` :class:`EfficientViTBlock`."""

    def __init__(self, in_dim: int, out_dim: int, depth: int, key_dim: int, num_heads: int, window_size: int,
                 kernels: Sequence[int], downsample: bool, drop_paths: Sequence[float],
                 fast_attention: bool = True) -> None:
        super().__init__()
        self.downsample = Downsample(in_dim, out_dim, drop_paths[0]) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*(
            EfficientViTBlock(out_dim, key_dim, num_heads, window_size, kernels, drop_paths[i], fast_attention)
            for i in range(depth)))


def _per_stage(value: int | Sequence[int], num_stages: int, name: str) -> tuple[int, ...]:
    if is_int(value):
        values = (value,) * num_stages
    else:
        values = tuple(value) if isinstance(value, Sequence) else ()  # e.g. 7.5: refused below, with the choices
    if len(values) != num_stages or any(not is_int(v) or v < 1 for v in values):
        raise ValueError(f'{name} must be a positive int or {num_stages} positive ints, got {value!r}')
    return tuple(map(int, values))


@register_model
class EfficientViT(BaseModule):
    """EfficientViT backbone (Liu et al., CVPR 2023) with multi-scale outputs at strides 16, 32 and 64.

    Args:
        arch: ``'m0'`` ... ``'m5'`` or a dict with ``embed_dims``, ``depths``, ``num_heads``, ``kernels``
            (and optionally ``key_dim``). Defaults to ``'m4'``.
        in_channels: Image channels. Defaults to 3.
        out_indices: Stages whose outputs are returned; negative indices count from the end.
            Defaults to ``(0, 1, 2)``.
        frozen_stages: ``-1`` freezes nothing, ``0`` the patch embedding, ``n`` the patch embedding and the
            first ``n`` stages (their parameters stop training and their BatchNorms stay in eval mode).
            Defaults to -1.
        norm_eval: Keep every BatchNorm in eval mode during training. Defaults to False.
        with_cp: Use activation checkpointing per block to save memory. Defaults to False.
        drop_path_rate: Stochastic depth rate, increasing linearly over the blocks. Defaults to 0.
        window_size: Attention window side, one int or one per stage. The default 7 everywhere is the dense
            prediction geometry of the official downstream code; :data:`CLASSIFICATION_WINDOWS` ``(7, 7, 4)``
            is what the official classifier and timm compute at 224x224. Checkpoint bias tables are resized
            bicubically when they were trained with another window. Defaults to 7.
        fast_attention: Run the attention on tokens (GEMMs instead of 1x1 convs, no layout conversions); same
            values as the reference NCHW path, which ``False`` selects. Defaults to True.
        channels_last: Run on channels-last (NHWC) memory. Same values; with ``fast_attention`` no memory-layout
            conversion happens between the convolutions (docs/benchmarks.md has the measured effect of both).
            Outputs are then channels-last tensors; building the backbone makes every op of ``mmcv.ops`` take
            contiguous tensors (:mod:`evit_mm.compat.mmcv_ops`: mmcv's compiled ops, RoIAlign among them, read raw
            NCHW memory whatever the strides; and float32 ones on the CPU, under CPU autocast). Defaults to True.
        gemm_convs: Before deployment, on channels-last CPU maps, compute every 1x1 conv as one GEMM over the
            pixels and the stem convs' weight gradients by im2col and GEMMs (:mod:`~evit_mm.models.gemm_conv`;
            same values); False keeps oneDNN's convolutions. Defaults to None: each where it measured faster
            (:func:`~evit_mm.models.eager_kernels.own_kernel_measured_faster`): in training the 1x1 GEMMs on AVX2
            CPUs and Intel's AVX-512 ones, the im2col weight gradients, and in inference the 1x1 GEMMs (as
            ``switch_to_deploy``'s ``fused_kernels``), on AVX2 CPUs; oneDNN won on AMD's AVX-512 CPUs at all three.
        fold_eval_bn: Wherever a BatchNorm is in eval mode and no gradient reaches its layer (``model.eval()``
            before deployment, validation, frozen stages), fold its running statistics into the conv weights on the
            fly (:meth:`ConvBN.eval_folded`, cached): one conv with a bias instead of conv + BatchNorm, same values.
            False always runs the BatchNorm. Defaults to True.
        pretrained: Deprecated; use ``init_cfg=dict(type='Pretrained', checkpoint=...)``.
        init_cfg: Initialisation config. ``type='Pretrained'`` accepts official (``{'model': ...}``), timm and
            evit_mm checkpoints (local path or URL), converted automatically. Defaults to None.
    """

    #: With ``channels_last``, copy an NCHW image into a channels-last buffer that the next CPU call of the same shape
    #: reuses, in inference and from one training step to the next (no fresh pages per call, same values:
    #: :func:`~evit_mm.models.input_buffer.channels_last_image`); False allocates the copy every call.
    reuse_input_buffer = True

    def __init__(
        self,
        arch: str | dict[str, Any] = 'm4',
        in_channels: int = 3,
        out_indices: int | Sequence[int] = (0, 1, 2),
        frozen_stages: int = -1,
        norm_eval: bool = False,
        with_cp: bool = False,
        drop_path_rate: float = 0.0,
        window_size: int | Sequence[int] = 7,
        fast_attention: bool = True,
        channels_last: bool = True,
        gemm_convs: bool | None = None,
        fold_eval_bn: bool = True,
        pretrained: str | None = None,
        init_cfg: dict | list[dict] | None = None,
    ) -> None:
        if pretrained is not None:
            if init_cfg is not None:
                raise ValueError('pass either pretrained (deprecated) or init_cfg, not both')
            print_log('EfficientViT: `pretrained` is deprecated, use init_cfg=dict(type="Pretrained", '
                      'checkpoint=...)', logger='current', level=logging.WARNING)
            init_cfg = dict(type='Pretrained', checkpoint=pretrained)
        pretrained_checkpoint(init_cfg)  # its keys checked when the model is built, not when weights are loaded
        super().__init__(init_cfg=init_cfg)
        self.arch = spec = ArchSpec.from_any(arch)
        n = spec.num_stages
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f'in_channels must be a positive int, got {in_channels!r}')
        self.in_channels = in_channels
        self.out_indices = self._normalize_out_indices(out_indices, n)
        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= n:
            raise ValueError(f'frozen_stages must be an int in [-1, {n}] (-1: none, 0: patch embedding, '
                             f'k: patch embedding and the first k stages), got {frozen_stages!r}')
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.channels_last = channels_last
        # heads may hand our maps to mmcv ops that read raw NCHW float32 memory (RoIAlign, NMS: Mask R-CNN)
        mmcv_ops.install()
        self.window_sizes = _per_stage(window_size, n, 'window_size')

        self.patch_embed = PatchEmbed(in_channels, spec.embed_dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(spec.depths), device='cpu').tolist()  # also under a meta device
        self.stages = nn.ModuleList()
        start = 0
        for i in range(n):
            self.stages.append(EfficientViTStage(
                in_dim=spec.embed_dims[max(i - 1, 0)], out_dim=spec.embed_dims[i], depth=spec.depths[i],
                key_dim=spec.key_dim, num_heads=spec.num_heads[i], window_size=self.window_sizes[i],
                kernels=spec.kernels, downsample=i > 0, drop_paths=rates[start:start + spec.depths[i]],
                fast_attention=fast_attention))
            start += spec.depths[i]
        self.stage_strides = tuple(PatchEmbed.stride * 2 ** i for i in range(n))
        self.out_channels = [spec.embed_dims[i] for i in self.out_indices]
        self.out_strides = [self.stage_strides[i] for i in self.out_indices]
        own_kernels = {switch: own_kernel_measured_faster(switch) if gemm_convs is None else gemm_convs
                       for switch in OWN_KERNEL_CPUS}
        self.set_conv_bn_paths(**own_kernels, fold_eval_bn=fold_eval_bn)
        self._freeze_stages()
        self._register_load_state_dict_pre_hook(self._rename_official_keys)

    @staticmethod
    def _normalize_out_indices(out_indices: int | Sequence[int], num_stages: int) -> tuple[int, ...]:
        indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        valid = f'ints in [{-num_stages}, {num_stages - 1}]'
        if not indices or any(not isinstance(i, int) or not -num_stages <= i < num_stages for i in indices):
            raise ValueError(f'out_indices must be non-empty {valid}, got {out_indices!r}')
        normalized = [i % num_stages for i in indices]
        if len(set(normalized)) != len(normalized):
            raise ValueError(f'out_indices has duplicates after normalisation: {out_indices!r} -> {normalized}')
        return tuple(sorted(normalized))

    # ---- weights ---------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Initialise, loading and converting a checkpoint when ``init_cfg`` is ``type='Pretrained'``."""
        pretrained = pretrained_checkpoint(self.init_cfg)
        if pretrained is not None:
            load_pretrained(self, pretrained['checkpoint'], prefix=pretrained.get('prefix'))
            self._is_init = True
        else:
            super().init_weights()
        self._freeze_stages()

    @staticmethod
    def _rename_official_keys(state_dict: dict, prefix: str, *args) -> None:
        """``load_state_dict`` hook: the official code's key names under this backbone's prefix become evit_mm's,
        so that any loader (mmengine's ``load_checkpoint``, ``tools/test.py``, mmdet's ``init_detector``) takes an
        official downstream detector checkpoint (``backbone.blocks1.0...``) as it is."""
        rename_official_backbone_keys(state_dict, prefix)

    # ---- freezing and modes ---------------------------------------------------------------------------
    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.patch_embed, *self.stages[:self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'EfficientViT':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def set_conv_bn_paths(self, *, gemm_convs: bool | None = None, im2col_weight_grads: bool | None = None,
                          fused_kernels: bool | None = None, fold_eval_bn: bool | None = None,
                          prepack_weights: bool | None = None,
                          float32_depthwise_input_grad: bool | None = None,
                          transposed_depthwise_input_grad: bool | None = None) -> 'EfficientViT':
        """Switch the fast paths of every unfused ConvBN on or off; None leaves a path as it is. Each path computes
        the same values as without it.

        Args:
            gemm_convs: In training, the 1x1 convs as GEMMs (:attr:`ConvBN.gemm_convs`).
            im2col_weight_grads: In training, the stem convs' weight gradients by im2col and GEMMs
                (:attr:`ConvBN.im2col_weight_grads`).
            fused_kernels: The convs with their eval-mode BatchNorm folded run through the deployed convs' CPU
                kernels (:attr:`ConvBN.fused_kernels`). The constructor's ``gemm_convs`` sets these three.
            fold_eval_bn: As in the constructor (:attr:`ConvBN.fold_eval_bn`).
            prepack_weights: The convs with their eval-mode BatchNorm folded run on CPU on weights reordered once for
                oneDNN; on by default (:attr:`ConvBN.prepack_weights`).
            float32_depthwise_input_grad: In bfloat16 on the CPU, the strided depthwise convs' input gradients
                computed in float32; on by default (:attr:`ConvBN.float32_depthwise_input_grad`).
            transposed_depthwise_input_grad: In float32 on the CPU, the depthwise convs' input gradients as
                transposed convs where torch's own kernel is slow (torch 2.1); on by default
                (:attr:`ConvBN.transposed_depthwise_input_grad`).
        """
        for module in self.modules():
            if isinstance(module, ConvBN):
                for name, value in (('gemm_convs', gemm_convs), ('im2col_weight_grads', im2col_weight_grads),
                                    ('fused_kernels', fused_kernels), ('fold_eval_bn', fold_eval_bn),
                                    ('prepack_weights', prepack_weights),
                                    ('float32_depthwise_input_grad', float32_depthwise_input_grad),
                                    ('transposed_depthwise_input_grad', transposed_depthwise_input_grad)):
                    if value is not None:
                        setattr(module, name, value)
        return self

    def switch_to_deploy(self, fused_kernels: bool | None = None, fold_identities: bool = True,
                         prepack_weights: bool = True) -> 'EfficientViT':
        """Fuse every Conv+BN in place (paper Sec. 4: BN rather than LayerNorm so that it folds away), then fold
        the identity of each depthwise residual ``x + DW(x)`` into its kernel
        (:meth:`~evit_mm.models.layers.Residual.fold_identity`).

        Args:
            fused_kernels: On CPU, also run each ReLU inside the convolution before it, and every 1x1 convolution
                as one GEMM that starts from the bias or the residual
                (:class:`~evit_mm.models.fused_conv.FusedConv2d`; same values, fewer passes over memory). Defaults
                to None: on where that measured faster, AVX2 CPUs
                (:func:`~evit_mm.models.eager_kernels.own_kernel_measured_faster`; on AMD's AVX-512 CPUs oneDNN's
                plain convolutions were 1.02-1.05x faster, on an Intel one level).
            fold_identities: Fold the identity of each depthwise residual into its kernel (same values up to float
                rounding; one conv instead of a conv and an add). Defaults to True.
            prepack_weights: On CPU, run the convolutions that oneDNN computes on weights reordered once for it
                (:class:`~evit_mm.models.fused_conv.FusedConv2d`; the same kernels without the per-call reorder,
                same values up to float rounding; a second copy of those weights). Defaults to True.
        """
        if fused_kernels is None:
            fused_kernels = own_kernel_measured_faster('fused_kernels')
        for module in self.modules():
            if isinstance(module, (ConvBN, ConvFFN, PatchMerging, PatchEmbed)):
                module.fuse(use_fused_kernel=fused_kernels)
            elif isinstance(module, BNLinear):
                module.fuse()
        for module in self.modules():  # after fusion: the fold needs the branch's ConvBN fused
            if fold_identities and isinstance(module, Residual):
                module.fold_identity()
            elif isinstance(module, FusedConv2d):
                module.prepack_weights = prepack_weights
        return self

    # ---- forward --------------------------------------------------------------------------------------
    def _check_batch_statistics(self, height: int, width: int) -> None:
        """Raise where a training-mode BatchNorm would see one value per channel: at batch 1, every stage from
        the first whose map is 1x1 on (each 3x3 stride-2 conv maps ``n`` pixels to ``ceil(n / 2)``, so stage ``i``'s
        map is ``ceil(n / stride_i)``). torch's own error names a tensor size, not the image, the stage or the fix."""
        last = self.out_indices[-1]
        first = next((i for i, stride in enumerate(self.stage_strides[:last + 1])
                      if -(-height // stride) == 1 and -(-width // stride) == 1), None)
        if first is None:
            return
        modules = [*([self.patch_embed] if first == 0 else []), *self.stages[first:last + 1]]
        if any(m.training for module in modules for m in module.modules() if isinstance(m, _BatchNorm)):
            stride = self.stage_strides[first]
            raise ImageInputError(
                f'EfficientViT in training mode: a {height}x{width} image at batch 1 gives stage {first} (stride '
                f'{stride}) a 1x1 map, and BatchNorm needs more than one value per channel to train; use a batch of '
                f'2 or more, images larger than {stride} pixels in height or width, or BatchNorm statistics kept as '
                f'they are there (norm_eval=True, or frozen_stages={last + 1})')

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        check_image_layout(x, self.in_channels)
        check_image_dtype_and_device(x, self.patch_embed.conv1.conv.weight)
        if x.shape[2] < PatchEmbed.stride or x.shape[3] < PatchEmbed.stride:
            raise ImageInputError(f'EfficientViT needs images of at least {PatchEmbed.stride}x{PatchEmbed.stride} '
                                  f'pixels, got {x.shape[2]}x{x.shape[3]}')
        if self.training and x.shape[0] == 1:
            self._check_batch_statistics(x.shape[2], x.shape[3])
        if self.channels_last:
            x = channels_last_image(x, reuse=self.reuse_input_buffer)
        x = self.patch_embed(x)
        outs = []
        last = self.out_indices[-1]
        for i, stage in zip(range(last + 1), self.stages):  # not a slice: torch 2.1's dynamo cannot trace that
            x = stage.downsample(x)
            for block in stage.blocks:
                if self.with_cp and self.training and x.requires_grad:
                    x = cp.checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            if i in self.out_indices:
                # the gradients the heads send back, in the maps' layout: heads and losses often send NCHW ones (a
                # global average pool or a mean expands to NCHW), and every BatchNorm backward below would then mix
                # a channels-last input with an NCHW gradient, which torch's CPU kernel ran about 10x slower than
                # matching layouts (M4 at 1x800x1344: 67 ms of BatchNorm backward per step against timm's 27 ms);
                # with NCHW maps, a head reading the map as tokens at batch 1 sends a layout that kernel misreads
                # (:mod:`~evit_mm.models.grad_layout`)
                outs.append(grad_in_layout(x, torch.channels_last if self.channels_last else torch.contiguous_format))
        return tuple(outs)

"""Small building blocks of EfficientViT: Conv+BN, BN+Linear, residual with drop path, FFN, squeeze-excite,
patch merging.

Attribute names follow timm's ``efficientvit_msra`` parameter tree (``conv``/``bn``, ``pw1``/``pw2``, ``m``),
so that evit_mm and timm state dicts share their keys.
"""
from __future__ import annotations

import torch
from timm.layers import DropPath, make_divisible
from torch import nn

from .depthwise_grad import depthwise_conv_transposed_input_grad, transposed_input_grad_dtype
from .derived_cache import DerivedCache
from .eager_kernels import exporting_or_compiling
from .fused_conv import DerivedWeights, FusedConv2d, pointwise_linear
from .gemm_conv import gemm_conv


def fold_batch_norm(weight: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of the one convolution equal to ``conv(weight)`` followed by ``bn`` in eval mode
    (running statistics): ``weight * s`` and ``beta - mean * s`` with ``s = gamma / sqrt(var + eps)``."""
    std = torch.sqrt(bn.running_var + bn.eps)
    scale = bn.weight / std if bn.weight is not None else std.reciprocal()
    shift = -bn.running_mean * scale if bn.bias is None else bn.bias - bn.running_mean * scale
    return weight * scale.view(-1, *(1,) * (weight.dim() - 1)), shift


class ConvBN(nn.Module):
    """A bias-free ``Conv2d`` followed by ``BatchNorm2d``, fusable into one ``Conv2d`` for deployment.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        kernel_size: Convolution kernel size. Defaults to 1.
        stride: Convolution stride. Defaults to 1.
        padding: Convolution padding. Defaults to 0.
        groups: Convolution groups. Defaults to 1.
        bn_weight_init: Initial BatchNorm scale; the paper's residual branches that end in a ConvBN start
            at 0 so that each block starts as the identity. Defaults to 1.
    """

    accepts_residual = True  # forward(x, residual): see Residual
    #: Before fusion, while autograd records, compute a 1x1 conv through torch's GEMM (:mod:`.gemm_conv`).
    #: ``EfficientViT`` sets it on its layers by the CPU (:func:`.eager_kernels.own_kernel_measured_faster`); on a
    #: standalone layer it is on.
    gemm_convs = True
    #: In training, compute a dense strided conv's weight gradient by im2col and GEMMs (:mod:`.gemm_conv`; the stem's
    #: convs). ``EfficientViT`` sets it on its layers by the CPU (:func:`.eager_kernels.own_kernel_measured_faster`);
    #: on a standalone layer it is on.
    im2col_weight_grads = True
    #: While the BatchNorm is in eval mode and no gradient reaches this layer's parameters (inference before
    #: deployment, validation, frozen stages), fold its running statistics into the conv weights on the fly: one
    #: conv with a bias instead of a conv and a BatchNorm pass over the map (:meth:`eval_folded`).
    fold_eval_bn = True
    #: With the BatchNorm folded on the fly, run the folded conv through the deployed convs' CPU kernels (a 1x1 conv
    #: as one GEMM: :class:`~.fused_conv.FusedConv2d`), as ``switch_to_deploy(fused_kernels=...)`` does.
    #: ``EfficientViT`` sets it on its layers by the CPU (:func:`.eager_kernels.own_kernel_measured_faster`, as for
    #: deployment); on a standalone layer it is on.
    fused_kernels = True
    #: With the BatchNorm folded on the fly, run the folded conv on CPU on weights reordered once for oneDNN, as
    #: deployed convs do (:class:`~.fused_conv.FusedConv2d`, ``prepack_weights``; cached with the folded weights).
    prepack_weights = True
    #: In bfloat16 on the CPU (autocast), compute a strided depthwise conv's input gradient in float32, 35-90x faster
    #: than torch's bfloat16 kernel, and any depthwise conv's where torch's kernel is slow (torch 2.1: 20-90x at
    #: stride 1) (:mod:`.depthwise_grad`; the forward pass and weight gradient unchanged).
    float32_depthwise_input_grad = True
    #: In float32 on the CPU, where torch's kernel for a channels-last depthwise conv's input gradient is slow (torch
    #: 2.1: 100-300x; measured once per process), compute that gradient as a transposed conv (:mod:`.depthwise_grad`).
    transposed_depthwise_input_grad = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(out_channels)
        nn.init.constant_(self.bn.weight, bn_weight_init)
        nn.init.zeros_(self.bn.bias)
        self._fold_cache: DerivedCache[tuple[torch.Tensor, torch.Tensor]] = DerivedCache()
        self._derived_weights = DerivedWeights()  # of the folded weight

    @property
    def fused(self) -> bool:
        """Whether the BatchNorm has been folded into the convolution."""
        return isinstance(self.bn, nn.Identity)

    def eval_folded(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The conv weight and bias with the eval-mode BatchNorm folded in (:func:`fold_batch_norm`), or None where
        the BatchNorm has to run: in training mode, without running statistics, with :attr:`fold_eval_bn` off, while
        a gradient can reach the conv or BatchNorm parameters, or while tracing, exporting or compiling (graphs keep
        their BatchNorm; inductor folds it by itself).

        Why: validation during training, inference before deployment and frozen stages run every ConvBN with a
        BatchNorm in eval mode, an affine pass over every map that the folded conv's bias absorbs (paper Sec. 4
        folds it for deployment; this does so without deploying). Where gradients flow (``norm_eval`` fine-tuning),
        folding per step measured no faster than the BatchNorm (0.98-1.02x for M4 at 2x512x672 and 1x800x1344:
        the weight-sized fold and its backward cost what the BatchNorm passes did), so the BatchNorm runs there.

        The folded tensors are cached; the key holds the storage and version counter of every tensor they come from
        and of the BatchNorm's batch counter, so new weights or statistics (``load_state_dict``, an optimizer step,
        ``.to()``, the BatchNorm run in training mode alone) are never served stale. Writes that bump no version
        counter are covered otherwise: any ``train()``/``eval()`` call drops the cache (mmengine's EMA hook swaps
        weights through ``.data``, then switches the mode), and so does any forward pass while the parameters train
        (fused optimizers, ``torch.optim.AdamW(fused=True)``, update them in place without a version bump, even in a
        model kept in eval mode).
        """
        bn = self.bn
        if (bn.training or not self.fold_eval_bn or bn.running_mean is None or bn.running_var is None
                or exporting_or_compiling()):
            return None
        params = (self.conv.weight, bn.weight, bn.bias)
        if self._fold_cache.training(params):
            return None
        # the batch counter: a BatchNorm run alone in training mode updates its statistics without a version bump
        sources = (*params, bn.running_mean, bn.running_var, bn.num_batches_tracked)
        return self._fold_cache.get(sources, lambda: fold_batch_norm(self.conv.weight, bn), also=(bn.eps,))

    def train(self, mode: bool = True) -> 'ConvBN':
        # the caches serve eval mode only; do not hold copies of the weights
        self._fold_cache.clear()
        self._derived_weights.clear()
        return super().train(mode)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``BN(conv(x))``, plus ``residual`` when given (in the conv's kernel once fused)."""
        if self.fused:
            return self.conv(x, residual)
        folded = self.eval_folded()
        if folded is not None:  # run as deployed
            return FusedConv2d.apply_to(self.conv, x, *folded, residual, kernels=self.fused_kernels,
                                        derived=self._derived_weights, prepack=self.prepack_weights)
        transposed_grad_dtype = transposed_input_grad_dtype(self.conv, x, bfloat16=self.float32_depthwise_input_grad,
                                                            float32=self.transposed_depthwise_input_grad)
        if transposed_grad_dtype is not None:
            y = depthwise_conv_transposed_input_grad(self.conv, x, transposed_grad_dtype)
        elif self.gemm_convs or self.im2col_weight_grads:
            y = gemm_conv(self.conv, x, pointwise=self.gemm_convs, im2col=self.im2col_weight_grads)
        else:
            y = self.conv(x)
        y = self.bn(y)
        # in place: BatchNorm's backward does not read its output, so autograd allows it and a map is saved
        return y if residual is None else y.add_(residual)

    @torch.no_grad()
    def fuse(self, relu: bool = False, use_fused_kernel: bool = True) -> None:
        """Fold the BatchNorm (with its running statistics) into the convolution, in place.

        Args:
            relu: The ReLU that follows this layer moves into the convolution; the caller drops its own.
            use_fused_kernel: Let :class:`FusedConv2d` run its CPU kernels (oneDNN fused conv, GEMM for 1x1).
        """
        if not self.fused:
            conv = self.conv
            weight, bias = fold_batch_norm(conv.weight, self.bn)
            fused = FusedConv2d(
                conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                dilation=conv.dilation, groups=conv.groups, bias=True,
            ).to(conv.weight)
            fused.weight.copy_(weight)
            fused.bias.copy_(bias)
            self.conv, self.bn = fused, nn.Identity()
            self._fold_cache.clear()
            self._derived_weights.clear()
        self.conv.relu = self.conv.relu or relu
        self.conv.use_fused_kernel = use_fused_kernel


class BNLinear(nn.Module):
    """``BatchNorm1d`` followed by ``Linear``: the paper's classification head, fusable into one ``Linear``.

    Args:
        in_features: Input features.
        out_features: Output features (classes).
        drop: Dropout between the norm and the linear layer. Defaults to 0.
        std: Standard deviation of the truncated-normal weight init. Defaults to 0.02.
    """

    def __init__(self, in_features: int, out_features: int, drop: float = 0.0, std: float = 0.02) -> None:
        super().__init__()
        self.bn: nn.Module = nn.BatchNorm1d(in_features)
        self.drop = nn.Dropout(drop)
        self.linear = nn.Linear(in_features, out_features)
        nn.init.trunc_normal_(self.linear.weight, std=std)
        nn.init.zeros_(self.linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.drop(self.bn(x)))

    @torch.no_grad()
    def fuse(self) -> None:
        """Fold the BatchNorm into the linear layer, in place."""
        if isinstance(self.bn, nn.Identity):
            return
        bn, linear = self.bn, self.linear
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        fused = nn.Linear(linear.in_features, linear.out_features).to(linear.weight)
        fused.weight.copy_(linear.weight * scale[None, :])
        fused.bias.copy_(linear.weight @ shift + linear.bias)
        self.linear, self.bn = fused, nn.Identity()


class Residual(nn.Module):
    """``x + drop_path(m(x))``.

    A branch with ``accepts_residual`` is called as ``m(x, residual=x)`` whenever no path is being dropped, so
    that once deployed the add runs inside its last convolution (:class:`~.fused_conv.FusedConv2d`). A deployed
    depthwise branch takes the identity into its kernel instead (:meth:`fold_identity`).

    Args:
        m: The residual branch.
        drop_path: Stochastic-depth probability of dropping the branch per sample. Defaults to 0.
    """

    def __init__(self, m: nn.Module, drop_path: float = 0.0) -> None:
        super().__init__()
        self.m = m
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        #: The branch computes ``x + m(x)`` by itself (:meth:`fold_identity`).
        self.identity_in_branch = False

    @torch.no_grad()
    def fold_identity(self) -> bool:
        """Fold the ``x +`` into the branch where it is one fused depthwise convolution with stride 1 and "same"
        padding, in place: 1 added to each channel's centre tap makes ``conv(x)`` equal ``x + conv(x)`` (the
        identity branch of RepVGG's re-parameterization, Ding et al., CVPR 2021). The sandwich layout (paper
        Fig. 3) has two such token-interaction layers per block; once deployed each is then one convolution instead of a
        convolution and an add over its map (one kernel fewer on a GPU, one pass over memory fewer on a CPU).
        Values move by float rounding only. Returns whether the identity is (now) in the branch."""
        if self.identity_in_branch:
            return True
        m = self.m
        if not (isinstance(m, ConvBN) and m.fused):
            return False
        conv = m.conv
        kh, kw = conv.kernel_size
        if not (conv.groups == conv.in_channels == conv.out_channels and kh % 2 and kw % 2
                and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1)
                and tuple(conv.padding) == (kh // 2, kw // 2) and conv.padding_mode == 'zeros'
                and not conv.relu):  # fused: a FusedConv2d
            return False
        conv.weight[:, 0, kh // 2, kw // 2] += 1.0
        self.identity_in_branch = True
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropping = self.training and isinstance(self.drop_path, DropPath)
        if self.identity_in_branch:
            y = self.m(x)
            return x + self.drop_path(y - x) if dropping else y
        if getattr(self.m, 'accepts_residual', False) and not dropping:
            return self.m(x, residual=x)
        return x + self.drop_path(self.m(x))


class ConvFFN(nn.Module):
    """The paper's feed-forward network: 1x1 ConvBN to ``hidden`` channels, ReLU, 1x1 ConvBN back (BN init 0).

    Args:
        dim: Input and output channels.
        hidden: Hidden channels (2x ``dim`` in EfficientViT).
    """

    accepts_residual = True

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.pw1 = ConvBN(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.pw2 = ConvBN(hidden, dim, bn_weight_init=0.0)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return self.pw2(self.act(self.pw1(x)), residual)

    def fuse(self, use_fused_kernel: bool = True) -> None:
        """Fold both BatchNorms; the ReLU moves into the first convolution."""
        self.pw1.fuse(relu=True, use_fused_kernel=use_fused_kernel)
        self.pw2.fuse(use_fused_kernel=use_fused_kernel)
        self.act = nn.Identity()


def depthwise_residual(dim: int, drop_path: float = 0.0, bn_weight_init: float = 1.0) -> Residual:
    """The token-interaction layer of the sandwich layout: ``x + DWConv3x3+BN(x)`` (paper Sec. 3.1)."""
    return Residual(ConvBN(dim, dim, 3, 1, 1, groups=dim, bn_weight_init=bn_weight_init), drop_path)


def ffn_residual(dim: int, drop_path: float = 0.0) -> Residual:
    """``x + FFN(x)`` with the FFN expanding to ``2 * dim`` channels (paper Sec. 3.1)."""
    return Residual(ConvFFN(dim, 2 * dim), drop_path)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., CVPR 2018) as EfficientViT's patch merging uses it: global average
    pool, 1x1 conv to ``channels * rd_ratio``, ReLU, 1x1 conv back, sigmoid gate on the input (timm's
    ``SEModule``, same parameter names ``fc1``/``fc2``, so checkpoints are shared).

    Written here rather than taken from timm because the two 1x1 convs run as GEMMs on the pooled ``(B, C)``
    vectors instead of as convolutions on ``(B, C, 1, 1)`` maps: oneDNN spends 230-670 us per such conv at
    EfficientViT-M4's shapes on batch 16 (2 CPU threads), the GEMMs a third of that; same values.

    Args:
        channels: Input and output channels.
        rd_ratio: Squeezed channels as a fraction of ``channels`` (rounded to a multiple of 8 as timm does).
            Defaults to 0.25.
    """

    def __init__(self, channels: int, rd_ratio: float = 0.25) -> None:
        super().__init__()
        squeezed = make_divisible(channels * rd_ratio, 8, round_limit=0.0)  # timm's (and the official) rounding
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self._casts = (DerivedWeights(), DerivedWeights())  # fc1's and fc2's weights in autocast's dtype

    def train(self, mode: bool = True) -> 'SqueezeExcite':
        for cache in self._casts:  # as DerivedCache asks of its owner
            cache.clear()
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = pointwise_linear(x.mean((2, 3)), self.fc1.weight, self.fc1.bias, self._casts[0]).relu_()
        gate = pointwise_linear(squeezed, self.fc2.weight, self.fc2.bias, self._casts[1]).sigmoid_()
        return x * gate[:, :, None, None]


class PatchMerging(nn.Module):
    """Inverted-residual downsampling between stages: 1x1 to 4C, ReLU, 3x3 stride-2 depthwise, ReLU,
    squeeze-excite (ratio 0.25), 1x1 to the next stage's channels.

    Args:
        dim: Input channels.
        out_dim: Output channels.
    """

    def __init__(self, dim: int, out_dim: int) -> None:
        super().__init__()
        hidden = 4 * dim
        self.conv1 = ConvBN(dim, hidden)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = ConvBN(hidden, hidden, 3, 2, 1, groups=hidden)
        self.se = SqueezeExcite(hidden, 0.25)
        self.conv3 = ConvBN(hidden, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.se(self.act(self.conv2(self.act(self.conv1(x))))))

    def fuse(self, use_fused_kernel: bool = True) -> None:
        """Fold the BatchNorms; both ReLUs move into the convolutions before them."""
        self.conv1.fuse(relu=True, use_fused_kernel=use_fused_kernel)
        self.conv2.fuse(relu=True, use_fused_kernel=use_fused_kernel)
        self.conv3.fuse(use_fused_kernel=use_fused_kernel)
        self.act = nn.Identity()


class PatchEmbed(nn.Sequential):
    """Overlapping patch embedding: four 3x3 stride-2 ConvBN (ReLU between), channels C/8, C/4, C/2, C.

    Args:
        in_channels: Image channels.
        dim: Channels of the first stage (C).
    """

    stride = 16

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_channels, dim // 8, 3, 2, 1)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = ConvBN(dim // 8, dim // 4, 3, 2, 1)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv3 = ConvBN(dim // 4, dim // 2, 3, 2, 1)
        self.relu3 = nn.ReLU(inplace=True)
        self.conv4 = ConvBN(dim // 2, dim, 3, 2, 1)

    def fuse(self, use_fused_kernel: bool = True) -> None:
        """Fold the BatchNorms; each ReLU moves into the convolution before it."""
        for i in (1, 2, 3):
            getattr(self, f'conv{i}').fuse(relu=True, use_fused_kernel=use_fused_kernel)
            setattr(self, f'relu{i}', nn.Identity())
        self.conv4.fuse(use_fused_kernel=use_fused_kernel)

"""Cascaded group attention inside local windows (EfficientViT, Liu et al., CVPR 2023, Sec. 3.2)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .derived_cache import DerivedCache
from .eager_kernels import eager_autocast_dtype, exporting_or_compiling
from .fused_conv import pointwise_linear
from .grad_layout import grad_in_layout
from .layers import ConvBN


#: The largest batch for which torch runs CUDA BatchNorm through cuDNN (``_batch_norm_impl_index``).
CUDNN_BATCH_NORM_MAX_BATCH = 131070


def pointwise_tokens(layer: ConvBN, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 :class:`ConvBN` applied to tokens ``(..., C)`` as one GEMM.

    The BatchNorm module itself runs on a view of the ``M`` tokens (no copy) as the equivalent NCHW map, so its
    statistics, running-stat updates and counters are exactly those of the conv: ``(M, C, 1, 1)`` up to
    :data:`CUDNN_BATCH_NORM_MAX_BATCH` tokens, one channels-last image ``(1, C, M, 1)`` beyond. Why two views:
    on CUDA, torch leaves cuDNN for a slow fallback above that batch size (EfficientViT-M4 in fp16 eval at batch
    256 on an H200: 32.3 ms with ``(M, C, 1, 1)``, 19.4 ms with the one-image view, timm 21.2 ms), while below
    it the one-image view was the slower one (batch 64: 23.7 ms against 14.9 ms). On the CPU both cost the same.
    Compiled and exported graphs always take the first view: their BatchNorm kernels are the compiler's or the
    runtime's, and a test on the size would be a guard.
    """
    # deployed, or the eval-mode BatchNorm folded on the fly: no views, no BatchNorm call (host time on GPUs)
    folded = (layer.conv.weight, layer.conv.bias) if layer.fused else layer.eval_folded()
    if folded is not None:
        return pointwise_linear(x, *folded, layer._derived_weights)
    y = F.linear(x, layer.conv.weight.flatten(1), layer.conv.bias)
    channels = y.shape[-1]
    if exporting_or_compiling() or y.numel() <= CUDNN_BATCH_NORM_MAX_BATCH * channels:
        return layer.bn(y.reshape(-1, channels, 1, 1)).view(y.shape)
    image = y.reshape(1, -1, 1, channels).permute(0, 3, 1, 2)
    return layer.bn(image).permute(0, 2, 3, 1).reshape(y.shape)


def relative_position_index(window_size: int) -> torch.Tensor:
    """Index into a ``(window_size * window_size)``-entry bias table for every pair of window positions.

    The table is indexed by the absolute offsets ``(|dy|, |dx|)`` as ``|dy| * window_size + |dx|``, which is
    the order in which the official code (and timm) enumerates the offsets, so tables are interchangeable.

    Returns:
        A ``(N, N)`` long tensor with ``N = window_size ** 2``.
    """
    coords = torch.stack(torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing='ij'))
    coords = coords.flatten(1)  # (2, N): y, x
    offsets = (coords[:, :, None] - coords[:, None, :]).abs()
    return offsets[0] * window_size + offsets[1]


class CascadedGroupAttention(nn.Module):
    """Cascaded group attention over one window (paper Eq. 1-3).

    The input channels are split into ``num_heads`` groups. Head ``i`` attends over group ``i`` plus the
    output of head ``i - 1``, with its own 1x1 ConvBN giving q, k (``key_dim`` each) and v (``dim / num_heads``)
    and a depthwise ConvBN on q. A learned bias per head and relative offset is added to the logits.

    Args:
        dim: Channels of the input and output.
        key_dim: Channels of the query and key. EfficientViT uses 16.
        num_heads: Number of heads (channel groups).
        window_size: Side of the (square) window the attention runs over.
        kernels: Kernel size of each head's depthwise conv on the query.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, window_size: int, kernels: Sequence[int]) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f'dim ({dim}) must be divisible by num_heads ({num_heads})')
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.val_dim = dim // num_heads
        self.scale = key_dim ** -0.5
        self.window_size = window_size
        self.qkvs = nn.ModuleList(ConvBN(self.val_dim, 2 * key_dim + self.val_dim) for _ in range(num_heads))
        self.dws = nn.ModuleList(
            ConvBN(key_dim, key_dim, kernels[i], 1, kernels[i] // 2, groups=key_dim) for i in range(num_heads))
        self.proj = nn.Sequential(nn.ReLU(inplace=True), ConvBN(self.val_dim * num_heads, dim, bn_weight_init=0.0))
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer('attention_bias_idxs', relative_position_index(window_size), persistent=False)
        self._bias_cache: DerivedCache[torch.Tensor] = DerivedCache()

    def attention_bias(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The bias table gathered to ``(num_heads, N, N)``, in ``dtype`` (default: the parameter's; autocast's
        where it applies, so that autocast does not cast the table again on every call).

        In eval mode without gradients the gathered table is cached. The cache key includes the parameter's
        storage and version counter, so loading new weights after ``.eval()`` (or moving the module) never
        serves a stale table, a trap of the official implementation; a call while the table trains drops the cache
        (fused optimizers update parameters in place without a version bump).
        """
        param = self.attention_biases
        dtype = dtype or param.dtype
        # the table trains (also e.g. fine-tuning in eval mode): gathered with autograd, the cache dropped
        if self._bias_cache.training((param,)) or self.training or exporting_or_compiling():
            return param[:, self.attention_bias_idxs].to(dtype)
        return self._bias_cache.get((param,), lambda: param[:, self.attention_bias_idxs].to(dtype), also=(dtype,))

    def train(self, mode: bool = True) -> 'CascadedGroupAttention':
        self._bias_cache.clear()
        return super().train(mode)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path: the same computation on windows as tokens ``(B, N, C)`` (``N = window_size ** 2``).

        The 1x1 ConvBNs become GEMMs on tokens, the products need no transposes, and only the query's depthwise
        conv sees a (channels-last) map, so no memory-layout conversions happen inside the attention.
        """
        B, N, _ = x.shape
        ws = self.window_size
        # one (N, N) table per head; baddbmm broadcasts it over windows
        biases = self.attention_bias(eager_autocast_dtype(x)).unbind(0)
        groups = x.chunk(self.num_heads, dim=-1)
        outputs = []
        feat = groups[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + groups[i]
            q, k, v = pointwise_tokens(qkv, feat).split([self.key_dim, self.key_dim, self.val_dim], dim=-1)
            q = dw(q.reshape(B, ws, ws, self.key_dim).permute(0, 3, 1, 2))  # channels-last NCHW view
            q = q.permute(0, 2, 3, 1).reshape(B, N, self.key_dim)
            attn = torch.baddbmm(biases[i], q, k.transpose(1, 2), alpha=self.scale)
            feat = attn.softmax(dim=-1) @ v
            outputs.append(feat)
        return pointwise_tokens(self.proj[1], torch.cat(outputs, dim=-1).relu_())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reference path: attend within ``x`` of shape ``(B, C, window_size, window_size)``."""
        B, _, H, W = x.shape
        biases = self.attention_bias().unbind(0)
        groups = x.chunk(self.num_heads, dim=1)
        outputs = []
        feat = groups[0]
        for i, (qkv, dw) in enumerate(zip(self.qkvs, self.dws)):
            if i > 0:
                feat = feat + groups[i]
            q, k, v = qkv(feat).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            q = dw(q)
            if B == 1:  # the product's gradient would reach the BatchNorm in a layout torch's CPU kernel misreads
                q = grad_in_layout(q)
            q, k, v = q.flatten(2), k.flatten(2), v.flatten(2)
            # bias + scale * q^T k in one kernel (same values as scaling the product, then adding the bias)
            attn = torch.baddbmm(biases[i], q.transpose(-2, -1), k, alpha=self.scale)
            attn = attn.softmax(dim=-1)
            feat = (v @ attn.transpose(-2, -1)).view(B, self.val_dim, H, W)
            outputs.append(feat)
        return self.proj(torch.cat(outputs, dim=1))


class LocalWindowAttention(nn.Module):
    """Cascaded group attention applied independently in non-overlapping square windows.

    Maps are zero-padded at the bottom and right to a multiple of the window (as the official downstream
    code and timm do), including maps smaller than one window, so any input size works.

    Args:
        dim: Channels.
        key_dim: Query/key channels per head.
        num_heads: Number of heads.
        window_size: Window side.
        kernels: Query depthwise kernel per head.
        fast: Use :meth:`CascadedGroupAttention.forward_tokens` (same values, faster); False runs the reference
            NCHW path. Defaults to True.
    """

    def __init__(self, dim: int, key_dim: int, num_heads: int, window_size: int, kernels: Sequence[int],
                 fast: bool = True) -> None:
        super().__init__()
        self.window_size = window_size
        self.fast = fast
        self.attn = CascadedGroupAttention(dim, key_dim, num_heads, window_size, kernels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        ws = self.window_size
        # Shortcuts on sizes only in eager calls: a traced graph (ONNX export) must hold for every input size, and
        # under torch.compile with dynamic shapes each shortcut would become a guard (a recompilation whenever an
        # image needs no padding where the last one did)
        general = exporting_or_compiling()
        if not general and not self.fast and H == ws and W == ws:
            return self.attn(x)
        pad_b, pad_r = (-H) % ws, (-W) % ws
        if general or pad_b or pad_r:
            x = F.pad(x, (0, pad_r, 0, pad_b))
        nh, nw = (H + pad_b) // ws, (W + pad_r) // ws
        # Partition through an NHWC view: for channels-last input (the backbone's default) the windows come out
        # channels-last as well, so the convolutions inside never reorder memory.
        windows = x.permute(0, 2, 3, 1).reshape(B, nh, ws, nw, ws, C).transpose(2, 3)
        if general:
            # reshaping copies unless a side is one window wide; explicit copies keep that out of graphs (an exported
            # program would hold for one of the two cases)
            windows = windows.clone(memory_format=torch.contiguous_format)
        if self.fast:
            windows = self.attn.forward_tokens(windows.reshape(B * nh * nw, ws * ws, C))
        else:
            windows = self.attn(windows.reshape(B * nh * nw, ws, ws, C).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = windows.reshape(B, nh, nw, ws, ws, C).transpose(2, 3)
        if general:
            x = x.clone(memory_format=torch.contiguous_format)
        x = x.reshape(B, nh * ws, nw * ws, C)
        if general or pad_b or pad_r:
            x = x[:, :H, :W]
        x = x.permute(0, 3, 1, 2)
        # channels-last whether or not it was padded: the residual add's output layout must not depend on the size
        return x.clone(memory_format=torch.channels_last) if general else x

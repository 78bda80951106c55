"""3x3 convolutions by Winograd's minimal filtering F(2x2, 3x3), for CPU inference of dense-prediction heads.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016: each 4x4 input tile and each 3x3
filter are transformed so that a 2x2 output tile costs 16 multiplies per channel pair instead of 36, turning a
3x3 convolution into 16 independent GEMMs (one per tile position) between transformed inputs and filters.

Why our own: oneDNN (PyTorch's CPU convolution) has no Winograd kernels on AVX2 CPUs, and a RetinaNet or FPN head
spends nearly all of its time in 256-channel 3x3 convolutions that already run at the machine's GEMM peak, so
fewer multiplies are the only way to make them faster. F(2x2, 3x3) keeps fp32 results within a few 1e-6 of the
direct convolution (relative to the output's scale; tests check it). Larger tiles need fewer multiplies still, at a
costlier input transform; F(4x4, 3x3) with points (0, +-1, 1/2, -2) measured 2.4e-6 against the direct conv's own
1.1e-6 fp32 error (``docs/benchmarks.md``, "Page faults in the whole pipeline": the next step, not built).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .eager_kernels import exporting_or_compiling
from .padding import zero_padded_nhwc

# G (filter) and A^T (output) transforms of F(2x2, 3x3); the output transform acts on both sides of a tile at once
# as a Kronecker product, (4, 16) from flattened 4x4 tiles back to 2x2 outputs. The input transform B^T d B, whose
# entries are 0 and +-1, is applied as additions (see _input_transform).
_G = torch.tensor(((1., 0., 0.), (.5, .5, .5), (.5, -.5, .5), (0., 0., 1.)), dtype=torch.float64)
_AT = torch.tensor(((1., 1., 1., 0.), (0., 1., -1., -1.)))
_TILE_OUT = torch.kron(_AT, _AT)

# Tiles per GEMM: enough rows for an efficient GEMM while one chunk's transformed tiles stay in cache.
# Measured on a 2-core AVX2 CPU for 256-2048 channels: 128-512 tiles beat both smaller and whole-map chunks.
_TILES_PER_CHUNK = 256


def winograd_filter(weight: torch.Tensor) -> torch.Tensor:
    """``G g G^T`` for every filter: ``(O, C, 3, 3)`` -> ``(16, C, O)``, computed in float64."""
    g = _G.to(weight.device)
    u = torch.einsum('ai,ocij,bj->abco', g, weight.double(), g)
    return u.reshape(16, weight.shape[1], weight.shape[0]).to(weight.dtype).contiguous()


def _input_transform(rows: torch.Tensor, row_sums: torch.Tensor, out: torch.Tensor) -> None:
    """``B^T d B`` of every 4x4 tile of ``rows`` ``(N, 2r+2, 2t+2, C)`` (tiles at a stride of 2) into ``out``
    ``(4, 4, N, r, t, C)``, through ``row_sums`` ``(4, N, r, 2t+2, C)``.

    ``B^T`` rows are ``d0 - d2``, ``d1 + d2``, ``d2 - d1``, ``d1 - d3``: applied to the tile rows, then to the tile
    columns, as eight elementwise ops on strided views. Why not one ``(16, 16)`` GEMM on gathered tiles (the
    textbook form): the gather is a strided copy of every tile and the GEMM, with 16 as its inner dimension, is
    bound by memory; the additions read the map in place and were 2.1x faster per chunk (256-channel FPN map).
    """
    r, t = out.shape[3], out.shape[4]
    d = [rows[:, a:a + 2 * r:2] for a in range(4)]  # tile row a of every tile: (N, r, 2t+2, C)
    torch.sub(d[0], d[2], out=row_sums[0])
    torch.add(d[1], d[2], out=row_sums[1])
    torch.sub(d[2], d[1], out=row_sums[2])
    torch.sub(d[1], d[3], out=row_sums[3])
    e = [row_sums[..., b:b + 2 * t:2, :] for b in range(4)]  # tile column b: (4, N, r, t, C)
    torch.sub(e[0], e[2], out=out[:, 0])
    torch.add(e[1], e[2], out=out[:, 1])
    torch.sub(e[2], e[1], out=out[:, 2])
    torch.sub(e[1], e[3], out=out[:, 3])


def winograd_conv3x3(x: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None = None,
                     relu: bool = False) -> torch.Tensor:
    """A 3x3, stride-1, padding-1 convolution of ``x`` ``(N, C, H, W)`` with transformed ``filters``
    (:func:`winograd_filter`), plus ``bias`` and a ReLU when asked (applied per chunk, while it is in cache).
    Returns ``(N, O, H, W)`` in ``x``'s memory layout (channels-last or contiguous)."""
    n, c, h, w = x.shape
    out_channels = filters.shape[2]
    th, tw = (h + 1) // 2, (w + 1) // 2
    kout = _TILE_OUT.to(x)  # no copy for CPU float32, the only case WinogradConv2d sends
    # NHWC, zero border of 1 plus what completes the last 2x2 output tile
    padded = zero_padded_nhwc(x, 1, 2 * th + 1 - h, 1, 2 * tw + 1 - w)
    out = torch.empty(n, 2 * th, 2 * tw, out_channels, dtype=x.dtype, device=x.device)
    rows = max(1, _TILES_PER_CHUNK // (n * tw))
    # one buffer each for the whole call; every chunk views its leading part, so views stay contiguous
    row_sums = x.new_empty(4 * n * rows * (2 * tw + 2) * c)
    transformed = x.new_empty(16 * n * rows * tw * c)
    for r0 in range(0, th, rows):
        r = min(rows, th - r0)
        count = n * r * tw
        v = transformed[:16 * count * c].view(4, 4, n, r, tw, c)
        _input_transform(padded[:, 2 * r0:2 * (r0 + r) + 2],
                         row_sums[:4 * n * r * (2 * tw + 2) * c].view(4, n, r, 2 * tw + 2, c), v)
        v = v.view(16, count, c)
        m = torch.bmm(v, filters)  # (16, tiles, O): the 16 GEMMs
        y = torch.mm(kout, m.view(16, count * out_channels)).view(2, 2, n, r, tw, out_channels)
        dest = out[:, 2 * r0:2 * (r0 + r)].view(n, r, 2, tw, 2, out_channels)
        y = y.permute(2, 3, 0, 4, 1, 5)
        if bias is None:
            dest.copy_(y)
        else:
            torch.add(y, bias, out=dest)
        if relu:
            dest.clamp_min_(0)
    result = out[:, :h, :w].permute(0, 3, 1, 2)  # (N, O, H, W) view of channels-last memory
    if x.is_contiguous(memory_format=torch.channels_last):
        if result.is_contiguous(memory_format=torch.channels_last):  # even sizes: nothing to crop
            return result
        layout = torch.channels_last
    else:  # the caller's layout: switching layouts between convs sends oneDNN down slow paths
        layout = torch.contiguous_format
    return torch.empty(result.shape, dtype=x.dtype, device=x.device, memory_format=layout).copy_(result)


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1, ungrouped ``Conv2d`` that runs :func:`winograd_conv3x3` where that is faster.

    Same parameters (and state-dict keys) as the ``Conv2d`` it replaces. The Winograd path runs for CPU float32
    inference (no autograd, not traced, exported or compiled) on maps of at least ``min_pixels`` whose input and
    output channels have a geometric mean of at least ``min_channels``; everything else runs the direct
    convolution. The transformed
    filters are cached and recomputed when the weights change.

    Args:
        *args: As for ``nn.Conv2d``.
        min_channels: Smallest ``sqrt(in_channels * out_channels)`` for the Winograd path. Measured on 2 AVX2
            cores against the direct conv (channels-last, with ReLU): 128->128 0.88-1.04x, 160->160 1.14x,
            128->256 1.30x, 192->192 1.21-1.29x, 256->256 1.27-1.35x, 512->512 1.86x. Defaults to 160.
        min_pixels: Smallest ``H * W`` for the Winograd path. Defaults to 256.
        relu: Apply a ReLU to the output (the caller drops its own). Defaults to False.
        **kwargs: As for ``nn.Conv2d``.
    """

    def __init__(self, *args, min_channels: int = 160, min_pixels: int = 256, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu
        if not self.supports(self):
            raise ValueError('WinogradConv2d needs kernel 3x3, stride 1, padding 1, dilation 1, groups 1 and zero '
                             f'padding; got {super().extra_repr()}')
        self.min_channels = min_channels
        self.min_pixels = min_pixels
        self._filters: tuple[tuple, torch.Tensor] | None = None

    @staticmethod
    def supports(conv: nn.Conv2d) -> bool:
        """Whether ``conv`` has the geometry F(2x2, 3x3) computes."""
        return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.stride) == (1, 1) and conv.padding in ((1, 1), 1)
                and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and conv.padding_mode == 'zeros')

    @classmethod
    def from_conv(cls, conv: nn.Conv2d, **kwargs) -> WinogradConv2d:
        """A WinogradConv2d sharing ``conv``'s parameters."""
        new = cls(conv.in_channels, conv.out_channels, 3, 1, 1, bias=conv.bias is not None,
                  device=conv.weight.device, dtype=conv.weight.dtype, **kwargs)
        new.weight, new.bias = conv.weight, conv.bias
        new.train(conv.training)
        return new

    def transformed_filters(self) -> torch.Tensor:
        w = self.weight
        key = (w.device, w.dtype, w.data_ptr(), None if w.is_inference() else w._version)
        if self._filters is None or self._filters[0] != key or key[3] is None:
            with torch.no_grad():
                self._filters = (key, winograd_filter(w))
        return self._filters[1]

    def _winograd_applies(self, x: torch.Tensor) -> bool:
        if x.device.type != 'cpu' or x.dtype != torch.float32 or exporting_or_compiling():  # cheapest first
            return False
        return (x.dim() == 4 and x.shape[0] > 0
                and self.in_channels * self.out_channels >= self.min_channels ** 2
                and x.shape[-2] * x.shape[-1] >= self.min_pixels
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad)))

    def extra_repr(self) -> str:
        return super().extra_repr() + (', relu=True' if self.relu else '')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._winograd_applies(x):
            return winograd_conv3x3(x, self.transformed_filters(), self.bias, self.relu)
        y = super().forward(x)
        return F.relu(y) if self.relu else y


def convert_to_winograd(model: nn.Module, **kwargs) -> int:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` that :meth:`WinogradConv2d.supports` with a
    :class:`WinogradConv2d` sharing its parameters. Returns how many were replaced."""
    replaced = 0
    for name, child in list(model.named_children()):
        if type(child) is nn.Conv2d and WinogradConv2d.supports(child):
            setattr(model, name, WinogradConv2d.from_conv(child, **kwargs))
            replaced += 1
        else:
            replaced += convert_to_winograd(child, **kwargs)
    return replaced

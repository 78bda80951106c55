"""3x3 convolutions by Winograd's minimal filtering F(m x m, 3x3), for CPU inference of dense-prediction heads.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016: each ``(m+2) x (m+2)`` input tile and
each 3x3 filter are transformed so that an ``m x m`` output tile costs ``(m+2)^2`` multiplies per channel pair
instead of ``9 m^2`` (F(2x2, 3x3): 16 instead of 36; F(4x4, 3x3): 36 instead of 144), turning a 3x3 convolution into
``(m+2)^2`` independent GEMMs (one per tile position) between transformed inputs and filters.

Why our own: oneDNN (PyTorch's CPU convolution) has no Winograd kernels on AVX2 CPUs, and a RetinaNet or FPN head
spends nearly all of its time in 256-channel 3x3 convolutions that already run at the machine's GEMM peak, so
fewer multiplies are the only way to make them faster. Accuracy (float32, largest error relative to the output's
largest value, against float64; tests check it): F(2x2, 3x3) about 4e-7, F(4x4, 3x3) with the points of
:data:`WINOGRAD_POINTS` 2-3e-6, the direct convolution's own rounding 1.5-1.8e-6 (256-channel convs,
``docs/benchmarks.md``, "Winograd F(4x4, 3x3)").
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .derived_cache import DerivedCache
from .eager_kernels import eager_conv_dtype, exporting_or_compiling
from .module_swap import replace_modules
from .padding import zero_padded_nhwc

#: Interpolation points of F(m x m, 3x3) per output tile side ``m`` (the point at infinity is implied). Why these:
#: among the point sets measured for F(4x4, 3x3), (0, +-1, 1/2, -2) had the smallest float32 error (2.4e-6 of the
#: output's scale for a 256-channel conv, against 5.3e-6 for the textbook (0, +-1, +-2) and the direct conv's own
#: 1.1e-6; ``docs/benchmarks.md``, "Page faults in the whole pipeline").
WINOGRAD_POINTS = {2: (0.0, 1.0, -1.0), 4: (0.0, 1.0, -1.0, 0.5, -2.0)}
#: Output tile side used where none is given: F(4x4, 3x3), 36 multiplies per 16 outputs against F(2x2)'s 64.
DEFAULT_TILE = 4
#: Input dtypes of the Winograd path and the largest tile each may use. bfloat16 (deployed on bfloat16 weights) takes
#: F(2x2, 3x3) only: against float64, a 256-channel conv on bfloat16 errs 2.9e-3 of the output's norm directly,
#: 5.3e-3 by F(2x2) and 2.1e-2 by F(4x4), whose transforms amplify bfloat16's rounding; F(2x2) in bfloat16 was 1.3-1.55x
#: faster than the direct bfloat16 conv on an AVX512-BF16 CPU at RetinaNet's head shapes (docs/benchmarks.md).
MAX_TILE = {torch.float32: 4, torch.bfloat16: 2}
# Tiles per GEMM: enough rows for an efficient GEMM while one chunk's transformed tiles stay in cache. Measured on a
# 2-core AVX2 CPU for 256-2048 channels: 128-512 tiles of 2x2 beat both smaller and whole-map chunks; for 4x4 tiles
# 128-256 measured the same and 48-96 slower (docs/benchmarks.md, "Winograd F(4x4, 3x3)").
_TILES_PER_CHUNK = {2: 256, 4: 128}


@dataclass(frozen=True)
class WinogradTransforms:
    """The matrices of F(m x m, 3x3) (Lavin & Gray, Sec. 4), built by Toom-Cook from :data:`WINOGRAD_POINTS`.

    ``Y = A^T [(G g G^T) * (B^T d B)] A`` for a ``(m+2) x (m+2)`` input tile ``d`` and a 3x3 filter ``g``. Each row of
    ``B^T`` is scaled so that its first nonzero entry is 1 (and the same row of ``G`` by the inverse, which leaves
    the products unchanged), so that the input transform starts every row with a plain addition.

    Attributes:
        tile: Output tile side ``m``.
        output: ``A^T`` ``(m, m+2)``, float64.
        filter: ``G`` ``(m+2, 3)``, float64.
        input_terms: The nonzero entries of each row of ``B^T`` as ``(column, coefficient)`` pairs.
        tile_output: ``A^T`` applied to both sides of a flattened tile at once, ``kron(A^T, A^T)``
            ``(m*m, (m+2)^2)``, float32 (built once here rather than in every convolution call).
    """

    tile: int
    output: torch.Tensor
    filter: torch.Tensor
    input_terms: tuple[tuple[tuple[int, float], ...], ...]
    tile_output: torch.Tensor

    @property
    def alpha(self) -> int:
        """Input tile side ``m + 2``."""
        return self.tile + 2


@functools.cache
def winograd_transforms(tile: int) -> WinogradTransforms:
    """:class:`WinogradTransforms` of F(tile x tile, 3x3).

    Toom-Cook with finite points ``p_j`` and infinity: ``A^T[k, j] = p_j^k``; ``G[j] = (1, p_j, p_j^2) / N_j`` with
    ``N_j = prod_{l != j} (p_j - p_l)``; row ``j`` of ``B^T`` holds the coefficients of ``prod_{l != j} (x - p_l)``
    and its last row those of ``prod_l (x - p_l)``; the point at infinity adds the last column of ``A^T`` and the
    last row of ``G``.
    """
    if tile not in WINOGRAD_POINTS:
        raise ValueError(f'unknown Winograd output tile {tile}; choose from {sorted(WINOGRAD_POINTS)}')
    points = WINOGRAD_POINTS[tile]
    alpha = tile + 2
    at = torch.zeros(tile, alpha, dtype=torch.float64)
    g = torch.zeros(alpha, 3, dtype=torch.float64)
    bt = torch.zeros(alpha, alpha, dtype=torch.float64)
    for j, p in enumerate(points):
        others = [q for q in points if q != p]
        at[:, j] = torch.tensor([p ** k for k in range(tile)], dtype=torch.float64)
        g[j] = torch.tensor([1.0, p, p * p], dtype=torch.float64) / math.prod(p - q for q in others)
        bt[j, :alpha - 1] = _polynomial_from_roots(others)
    at[tile - 1, alpha - 1] = 1.0
    g[alpha - 1, 2] = 1.0
    bt[alpha - 1] = _polynomial_from_roots(points)
    lead = torch.stack([row[row.nonzero()[0, 0]] for row in bt])  # first nonzero entry of each row
    bt, g = bt / lead[:, None], g * lead[:, None]
    terms = tuple(tuple((int(j), float(row[j])) for j in row.nonzero()[:, 0]) for row in bt)
    return WinogradTransforms(tile, at, g, terms, torch.kron(at, at).float())


def _polynomial_from_roots(roots: tuple[float, ...] | list[float]) -> torch.Tensor:
    """Coefficients (constant term first) of ``prod (x - r)``, float64."""
    coefficients = torch.ones(1, dtype=torch.float64)
    for r in roots:
        coefficients = torch.cat([coefficients.new_zeros(1), coefficients]) - r * torch.cat(
            [coefficients, coefficients.new_zeros(1)])
    return coefficients


def winograd_filter(weight: torch.Tensor, tile: int = DEFAULT_TILE, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``G g G^T`` for every filter: ``(O, C, 3, 3)`` -> ``((tile+2)^2, C, O)``, computed in float64 and rounded once
    to ``dtype`` (default: the weight's)."""
    g = winograd_transforms(tile).filter.to(weight.device)
    u = torch.einsum('ai,ocij,bj->abco', g, weight.double(), g)
    return u.reshape(-1, weight.shape[1], weight.shape[0]).to(dtype or weight.dtype).contiguous()


def _combine(parts: list[torch.Tensor], terms: tuple[tuple[int, float], ...], out: torch.Tensor) -> None:
    """``out = sum(coefficient * parts[index])`` over ``terms``, whose first coefficient is 1."""
    (first, _), rest = terms[0], terms[1:]
    if not rest:
        out.copy_(parts[first])
        return
    torch.add(parts[first], parts[rest[0][0]], alpha=rest[0][1], out=out)
    for index, coefficient in rest[1:]:
        out.add_(parts[index], alpha=coefficient)


def _input_transform(rows: torch.Tensor, row_sums: torch.Tensor, out: torch.Tensor,
                     transforms: WinogradTransforms) -> None:
    """``B^T d B`` of every input tile of ``rows`` ``(N, m*r+2, m*t+2, C)`` (tiles of side ``m+2`` at a stride of
    ``m``) into ``out`` ``(m+2, m+2, N, r, t, C)``, through ``row_sums`` ``(m+2, N, r, m*t+2, C)``.

    ``B^T`` is applied to the tile rows, then to the tile columns, as a few elementwise ops per row of ``B^T`` on
    strided views. Why not one GEMM on gathered tiles (the textbook form): the gather is a strided copy of every
    tile and the GEMM, with ``(m+2)^2`` as its inner dimension, is bound by memory; for F(2x2, 3x3) the additions
    read the map in place and were 2.1x faster per chunk (256-channel FPN map).
    """
    m, r, t = transforms.tile, out.shape[3], out.shape[4]
    d = [rows[:, a:a + m * r:m] for a in range(transforms.alpha)]  # tile row a of every tile: (N, r, m*t+2, C)
    for i, terms in enumerate(transforms.input_terms):
        _combine(d, terms, row_sums[i])
    e = [row_sums[..., b:b + m * t:m, :] for b in range(transforms.alpha)]  # tile column b: (m+2, N, r, t, C)
    for i, terms in enumerate(transforms.input_terms):
        _combine(e, terms, out[:, i])


def winograd_conv3x3(x: torch.Tensor, filters: torch.Tensor, bias: torch.Tensor | None = None,
                     relu: bool = False) -> torch.Tensor:
    """A 3x3, stride-1, padding-1 convolution of ``x`` ``(N, C, H, W)`` with transformed ``filters``
    (:func:`winograd_filter`, whose first dimension, ``(m+2)^2``, gives the tile), plus ``bias`` and a ReLU when
    asked (applied per chunk, while it is in cache). Returns ``(N, O, H, W)`` in ``x``'s memory layout
    (channels-last or contiguous)."""
    n, c, h, w = x.shape
    alpha = math.isqrt(filters.shape[0])
    transforms = winograd_transforms(alpha - 2)
    m, out_channels = transforms.tile, filters.shape[2]
    th, tw = -(-h // m), -(-w // m)
    kout = transforms.tile_output.to(x)  # no copy for CPU float32; 16-64 values for bfloat16
    # NHWC, zero border of 1 plus what completes the last output tile
    padded = zero_padded_nhwc(x, 1, m * th + 1 - h, 1, m * tw + 1 - w)
    out = torch.empty(n, m * th, m * tw, out_channels, dtype=x.dtype, device=x.device)
    rows = max(1, _TILES_PER_CHUNK[m] // (n * tw))
    # one buffer each for the whole call; every chunk views its leading part, so views stay contiguous
    row_sums = x.new_empty(alpha * n * rows * (m * tw + 2) * c)
    transformed = x.new_empty(alpha * alpha * n * rows * tw * c)
    for r0 in range(0, th, rows):
        r = min(rows, th - r0)
        count = n * r * tw
        v = transformed[:alpha * alpha * count * c].view(alpha, alpha, n, r, tw, c)
        _input_transform(padded[:, m * r0:m * (r0 + r) + 2],
                         row_sums[:alpha * n * r * (m * tw + 2) * c].view(alpha, n, r, m * tw + 2, c), v, transforms)
        v = v.view(alpha * alpha, count, c)
        products = torch.bmm(v, filters)  # (alpha^2, tiles, O): one GEMM per position in the tile
        y = torch.mm(kout, products.view(alpha * alpha, count * out_channels)).view(m, m, n, r, tw, out_channels)
        dest = out[:, m * r0:m * (r0 + r)].view(n, r, m, tw, m, out_channels)
        y = y.permute(2, 3, 0, 4, 1, 5)
        if bias is None:
            dest.copy_(y)
        else:
            torch.add(y, bias, out=dest)
        if relu:
            dest.clamp_min_(0)
    result = out[:, :h, :w].permute(0, 3, 1, 2)  # (N, O, H, W) view of channels-last memory
    if x.is_contiguous(memory_format=torch.channels_last):
        if result.is_contiguous(memory_format=torch.channels_last):  # sizes that are multiples of m: no crop
            return result
        layout = torch.channels_last
    else:  # the caller's layout: switching layouts between convs sends oneDNN down slow paths
        layout = torch.contiguous_format
    return torch.empty(result.shape, dtype=x.dtype, device=x.device, memory_format=layout).copy_(result)


class WinogradConv2d(nn.Conv2d):
    """A 3x3, stride-1, padding-1, ungrouped ``Conv2d`` that runs :func:`winograd_conv3x3` where that is faster.

    Same parameters (and state-dict keys) as the ``Conv2d`` it replaces. The Winograd path runs for CPU inference
    in float32, or in bfloat16 with F(2x2, 3x3) only (:data:`MAX_TILE`; input and weights of one dtype, or under CPU
    autocast in its dtype, as autocast would run the direct conv; no autograd, not traced, exported or compiled)
    on batches of at least ``min_pixels`` pixels in all (batch x height x width: the rows of its GEMMs) whose input
    and output channels have a geometric mean of at least ``min_channels``: F(4x4, 3x3) from
    ``large_tile_min_pixels`` pixels, F(2x2, 3x3) below; everything else runs the direct convolution. Why the
    whole batch: Mask R-CNN's mask head runs its four 256-channel convs on 100 RoIs of 14x14 at once, (100, 256, 14,
    14), which took 189 ms per conv directly (NCHW, as mmdet runs it) and 111 ms by F(2x2, 3x3). The transformed
    filters are cached and recomputed when the weights change.

    Args:
        *args: As for ``nn.Conv2d``.
        min_channels: Smallest ``sqrt(in_channels * out_channels)`` for the Winograd path. Measured on 2 AVX2
            cores against the direct conv (channels-last, with ReLU, F(2x2)): 128->128 0.88-1.04x, 160->160 1.14x,
            128->256 1.30x, 192->192 1.21-1.29x, 256->256 1.27-1.35x, 512->512 1.86x. Defaults to 160.
        min_pixels: Smallest ``N * H * W`` for the Winograd path. Defaults to 256.
        tile: Largest output tile, 2 or 4 (F(2x2, 3x3) everywhere). Defaults to :data:`DEFAULT_TILE`.
        large_tile_min_pixels: Smallest ``N * H * W`` for the 4x4 tile. Measured, 256->256 with ReLU, F(4x4)
            against F(2x2): 73 / 101 ms at 1x100x167, 19.9 / 25.3 at 1x50x84, 6.4 / 7.4 at 1x25x42, 2.65 / 2.38 at
            1x13x21 (where the padding to whole 4x4 tiles and the larger transforms cost more than the multiplies
            saved); 100x7x7 26.1 / 35.2, 100x14x14 100.3 / 104.2, 20x14x14 25.2 / 23.9, 4x14x14 5.3 / 5.1.
            Defaults to 1024.
        relu: Apply a ReLU to the output (the caller drops its own). Defaults to False.
        **kwargs: As for ``nn.Conv2d``.
    """

    def __init__(self, *args, min_channels: int = 160, min_pixels: int = 256, tile: int = DEFAULT_TILE,
                 large_tile_min_pixels: int = 1024, relu: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu
        if not self.supports(self):
            raise ValueError('WinogradConv2d needs kernel 3x3, stride 1, padding 1, dilation 1, groups 1 and zero '
                             f'padding; got {super().extra_repr()}')
        winograd_transforms(tile)  # an unknown tile fails here
        self.min_channels = min_channels
        self.min_pixels = min_pixels
        self.tile = tile
        self.large_tile_min_pixels = large_tile_min_pixels
        self._filters: dict[tuple[int, torch.dtype], DerivedCache[torch.Tensor]] = {}  # per tile and dtype

    @staticmethod
    def supports(conv: nn.Conv2d) -> bool:
        """Whether ``conv`` has the geometry F(m x m, 3x3) computes."""
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

    def transformed_filters(self, tile: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The weights as :func:`winograd_filter` of ``tile`` transforms them into ``dtype`` (default: the weight's),
        cached per tile and dtype until the weight changes (:class:`~.derived_cache.DerivedCache`)."""
        weight = self.weight
        dtype = dtype or weight.dtype
        cache = self._filters.setdefault((tile, dtype), DerivedCache())
        return cache.get((weight,), lambda: winograd_filter(weight, tile, dtype))

    def train(self, mode: bool = True) -> WinogradConv2d:
        self._filters.clear()  # as DerivedCache asks of its owner: weights swapped through .data, then a switch
        return super().train(mode)

    def _plan(self, x: torch.Tensor) -> tuple[int, torch.dtype] | None:
        """The output tile and the dtype the Winograd path would compute ``x`` with, or None where the direct
        convolution runs. The dtype is CPU autocast's where that applies (as autocast would cast the direct conv's
        operands; the tile follows it, so F(4x4, 3x3) never runs in bfloat16), else ``x``'s where the weight has it
        too (mixed dtypes go to the direct conv, which raises)."""
        if not x.is_cpu or exporting_or_compiling():  # cheapest first
            return None
        dtype = eager_conv_dtype(x, self.weight)
        max_tile = MAX_TILE.get(dtype)
        if max_tile is None:
            return None
        pixels = x.shape[0] * x.shape[-2] * x.shape[-1] if x.dim() == 4 else 0  # the GEMMs' rows
        if not (x.shape[0] > 0 and self.in_channels * self.out_channels >= self.min_channels ** 2
                and pixels >= self.min_pixels
                and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))):
            return None
        return min(self.tile if pixels >= self.large_tile_min_pixels else 2, max_tile), dtype

    def winograd_tile(self, x: torch.Tensor) -> int | None:
        """The output tile the Winograd path would use for ``x``, or None where the direct convolution runs."""
        plan = self._plan(x)
        return None if plan is None else plan[0]

    def extra_repr(self) -> str:
        return super().extra_repr() + f', tile={self.tile}' + (', relu=True' if self.relu else '')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plan = self._plan(x)
        if plan is not None:
            tile, dtype = plan
            bias = None if self.bias is None else self.bias.to(dtype)
            return winograd_conv3x3(x.to(dtype), self.transformed_filters(tile, dtype), bias, self.relu)
        y = super().forward(x)
        return F.relu(y) if self.relu else y


def convert_to_winograd(model: nn.Module, **kwargs) -> int:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` that :meth:`WinogradConv2d.supports`, with weights of a
    dtype its Winograd path serves (:data:`MAX_TILE`), with a :class:`WinogradConv2d` sharing its parameters. Returns
    how many were replaced."""
    return replace_modules(model, lambda m: type(m) is nn.Conv2d and WinogradConv2d.supports(m)
                           and m.weight.dtype in MAX_TILE,
                           lambda conv: WinogradConv2d.from_conv(conv, **kwargs))

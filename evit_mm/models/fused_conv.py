"""Deploy-time convolution whose ReLU (oneDNN's fused convolution) or, for 1x1 convolutions, ReLU and residual add
(one GEMM) run inside the convolution's kernel on the CPU."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from .derived_cache import DerivedCache
from .eager_kernels import eager_channels_last_cpu, eager_autocast_dtype, exporting_or_compiling
from .gemm_conv import is_pointwise, pointwise_gemm


@functools.cache
def onednn_fusion_available() -> bool:
    """Whether this PyTorch build has oneDNN's fused convolution (x86 and aarch64 CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, '_convolution_pointwise')


#: Dtypes of the prepacked path: float32, and bfloat16 for models deployed on bfloat16 weights
#: (:func:`evit_mm.deploy.run_in_bfloat16`), where reordering once measured 1.04-1.55x per conv of M4 as well.
PREPACKED_DTYPES = (torch.float32, torch.bfloat16)


def _onednn_geometry(conv: nn.Conv2d) -> tuple[list[int], list[int], list[int], int]:
    return list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups


class DerivedWeights:
    """A layer's weights as its kernels take them, kept until the weights change: under autocast, the weight and bias
    cast to autocast's dtype (:meth:`cast`, on any device); on the CPU, the conv weight reordered into oneDNN's
    blocked layout for one input shape (:meth:`get`), served when a call's input shape is the previous call's (the
    first call with a new shape takes the plain conv), made on the first such repeat and kept, keyed on the shape,
    until the weight or the shape changes.

    Why not pack on the first call: the layout oneDNN picks depends on the input shape, and a weight packed for another
    shape can cost more than the plain conv (deployed M4 packed at 1x224x224 ran 0.47x at 1x800x1344); repacking
    whenever the shape changes cost 5-6% where it changed on every call (detection at batch 1, images of varying
    aspect ratio), more than the reorder it saves (``docs/benchmarks.md``). Waiting for a repeat keeps fixed-shape
    workloads on packed weights from their second call and leaves ever-changing shapes on the plain conv. Under
    autocast the packed copy is made from the cast weight.
    """

    def __init__(self) -> None:
        self._cache: DerivedCache[torch.Tensor] = DerivedCache()
        self._cast: DerivedCache[tuple[torch.Tensor, torch.Tensor | None]] = DerivedCache()
        self._last_shape: tuple[int, ...] | None = None  # the input shape of the previous call

    @property
    def empty(self) -> bool:
        return self._cache.empty and self._cast.empty

    def clear(self) -> None:
        self._cache.clear()
        self._cast.clear()
        self._last_shape = None

    def cast(self, weight: torch.Tensor, bias: torch.Tensor | None,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``weight`` and ``bias`` in ``dtype`` (autocast's), cast once and kept until either changes, so that the
        packed copy made from them is kept as well; the caller has checked :meth:`training`."""
        if weight.dtype == dtype and (bias is None or bias.dtype == dtype):
            return weight, bias
        return self._cast.get((weight, bias), lambda: (weight.to(dtype), None if bias is None else bias.to(dtype)),
                              also=(dtype,))

    def training(self, weight: torch.Tensor) -> bool:
        """Whether autograd can reach ``weight`` in this call; if so, the packed and cast copies are dropped
        (:meth:`DerivedCache.training`)."""
        if self._cache.training((weight,)):
            self._cast.clear()
            return True
        return False

    def get(self, conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
        """``weight`` packed for ``conv`` on ``x``'s shape, or None where the plain conv should run this call."""
        shape = tuple(x.shape)
        repeated, self._last_shape = shape == self._last_shape, shape
        if not repeated:
            return None
        geometry = _onednn_geometry(conv)
        return self._cache.get((weight,), lambda: torch.ops.mkldnn._reorder_convolution_weight(
            weight.contiguous(), *geometry, list(shape)), also=(shape,))


def autocast_operands(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                      cache: DerivedWeights | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``x``, ``weight`` and ``bias`` as autocast would hand them to the conv or linear layer they feed: unchanged
    where it does not apply (:func:`~.eager_kernels.eager_autocast_dtype`), else in its dtype, the weight and bias
    kept in ``cache`` where one is given and no gradient reaches the weight (cast for this call otherwise, with
    autograd, as autocast does), and ``x`` cast only where it has another dtype (``.to`` costs a dispatch even when
    it returns its input)."""
    dtype = eager_autocast_dtype(x)
    if dtype is None:
        return x, weight, bias
    if x.dtype != dtype:
        x = x.to(dtype)
    if cache is not None and not cache.training(weight):
        return x, *cache.cast(weight, bias, dtype)
    return x, weight.to(dtype), None if bias is None else bias.to(dtype)


def pointwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                     cache: DerivedWeights | None) -> torch.Tensor:
    """A 1x1 conv's ``weight`` ``(O, I, 1, 1)`` and ``bias`` applied to rows ``(..., I)`` by ``F.linear``, under
    autocast on the weights kept in its dtype in ``cache`` (:func:`autocast_operands`)."""
    x, weight, bias = autocast_operands(x, weight, bias, cache)
    return F.linear(x, weight.flatten(1), bias)


class FusedConv2d(nn.Conv2d):
    """A ``Conv2d`` (BatchNorm already folded in) that can apply a ReLU in the same kernel or add a residual.

    Why our own: eager PyTorch runs conv and ReLU as separate kernels, each writing a whole feature map to memory
    and allocating a new one; oneDNN applies the ReLU as a post-op while the conv output is still in cache. This is
    the kernel that ``torch.compile`` emits for frozen CPU graphs (``torch.ops.mkldnn._convolution_pointwise``),
    used here in eager mode, at any input size, without a compile step. The values are those of the separate ops
    (tests check it). A residual is added in place into the conv's fresh output, not as oneDNN's sum post-op: for
    depthwise convs torch runs that post-op as conv + add anyway, 40-50 us slower per call, and for 1x1 convs it
    measured 0.8-1.0x of conv + add (``docs/benchmarks.md``).

    A 1x1, stride-1 conv on a channels-last CPU map is one GEMM over the pixels instead (the NHWC memory already is
    the ``(B*H*W, C)`` matrix): ``addmm`` starts from the bias or the residual, and the ReLU runs in place on the
    output while it is in cache. Why: torch's GEMM (MKL) beat oneDNN's fused 1x1 conv at every EfficientViT-M4
    shape measured but one, by 1.2-1.8x at batch 16 on 7x7 and 4x4 maps, and the deployed M4 backbone got
    1.07-1.14x faster (``docs/benchmarks.md``, "Training and deploy through GEMMs"). The GEMM is differentiable;
    it is skipped while tracing, exporting or compiling, so that graphs keep their convolutions.

    Every other deployed conv on a channels-last CPU map (float32, or bfloat16 weights) runs oneDNN's convolution on
    weights reordered once into oneDNN's blocked layout for the input's shape, with the ReLU as its post-op
    (``prepack_weights``; whenever the input shape repeats the previous call's, :class:`DerivedWeights`). Why:
    ``F.conv2d`` reorders the plain weights on every call; reordered once, M4's depthwise and 1x1 convs ran
    1.05-1.36x faster alone (the most on small maps), the whole deployed backbone 1.08x at 1x224x224, 1.03x at
    16x224x224 and 1.02x at 1x800x1344 (medians of 4-11 runs, AVX-512, ``docs/benchmarks.md``). It is what
    ``torch.compile`` does for frozen CPU graphs, here in eager mode. The cache holds a second copy of the conv weights
    in that layout. Threads sharing a model may race on it and be served weights packed for another shape: oneDNN
    then computes the same values, only slower (tests check it).

    The plain ops run instead whenever none applies; the fused kernel does not run when autograd is needed,
    the tensors are not CPU float32, the graph is being traced, exported or compiled (``torch.compile`` fuses by
    itself), or ``use_fused_kernel`` is False. Without prepacking they also run where they are faster: for outputs
    below :attr:`min_output_elements`, the fused kernel's fixed cost per call (it reorders the weights, among other
    things) exceeds the pass it saves (measured on
    2 AVX2 cores: +80 us for a 1x1 conv 256->512 on 7x7, -3.2 ms for 128->256 on 56x56; at 1x224x224 the
    deployed M4 took 36.8 ms with the kernel everywhere and 32.7 ms without).

    Args:
        *args: As for ``nn.Conv2d``.
        relu: Apply a ReLU to the output. Defaults to False.
        use_fused_kernel: Allow the oneDNN fused kernel and the GEMM. Defaults to True.
        prepack_weights: Run the CPU convolution on weights reordered once for oneDNN. Defaults to True.
        **kwargs: As for ``nn.Conv2d``.
    """

    #: Smallest output (elements per call) for which the fused kernel is used.
    min_output_elements = 65536

    def __init__(self, *args, relu: bool = False, use_fused_kernel: bool = True, prepack_weights: bool = True,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.relu = relu
        self.use_fused_kernel = use_fused_kernel
        self.prepack_weights = prepack_weights
        self._derived_weights = DerivedWeights()

    def extra_repr(self) -> str:
        return super().extra_repr() + (', relu=True' if self.relu else '')

    @staticmethod
    def _onednn_applies(conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor,
                        dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> bool:
        """Whether oneDNN's own convolution ops (fused, prepacked) may run ``conv`` on ``x`` of one of ``dtypes``
        (weights of the same dtype) in this call: not while ``torch.backends.mkldnn.flags(enabled=False)`` keeps
        PyTorch's own convolutions off oneDNN (e.g. to rule it out while debugging)."""
        # the cheapest rejection first: every deployed conv of a model on a GPU (host-bound at batch 1) ends here
        if not (x.is_cpu and x.dtype in dtypes):
            return False
        if exporting_or_compiling():  # before the size and layout checks, which a trace would freeze
            return False
        return (weight.dtype == x.dtype and conv.padding_mode == 'zeros' and not isinstance(conv.padding, str)
                and onednn_fusion_available() and torch.backends.mkldnn.enabled
                and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))

    @classmethod
    def _onednn_relu_applies(cls, conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor) -> bool:
        if not cls._onednn_applies(conv, x, weight):
            return False
        stride_h, stride_w = conv.stride
        return x.numel() // conv.in_channels * conv.out_channels // (stride_h * stride_w) >= cls.min_output_elements

    @staticmethod
    def _prepacked_conv(conv: nn.Conv2d, x: torch.Tensor, blocked: torch.Tensor, bias: torch.Tensor | None,
                        relu: bool) -> torch.Tensor:
        """``relu(conv2d(x, weight, bias))`` (or without the ReLU) by oneDNN on the weight packed as ``blocked``
        (:class:`DerivedWeights`)."""
        return torch.ops.mkldnn._convolution_pointwise(x, blocked, bias, *_onednn_geometry(conv),
                                                       'relu' if relu else 'none', [], '')

    @classmethod
    def apply_to(cls, conv: nn.Conv2d, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 residual: torch.Tensor | None = None, relu: bool = False, kernels: bool = True,
                 derived: DerivedWeights | None = None, prepack: bool = True) -> torch.Tensor:
        """``relu(conv2d(x, weight, bias))`` or ``residual + conv2d(x, weight, bias)`` (or the conv alone) with the
        geometry of ``conv``, through this class's CPU kernels where they apply and ``kernels`` is True. ``derived``
        keeps this conv's derived weights: their copy in autocast's dtype, and, where ``prepack`` is True, their copy
        prepacked for oneDNN. Also what a ConvBN runs with its eval-mode BatchNorm folded on the fly
        (:meth:`~.layers.ConvBN.eval_folded`)."""
        if residual is not None and relu:
            raise ValueError('FusedConv2d applies either a ReLU or a residual add, not both')
        # every path gets the operands autocast would give the conv this replaces (the residual, added after it,
        # keeps its dtype): oneDNN's own ops and the in-place GEMM below are outside autocast, and autocast itself
        # would cast the weight and bias on every call
        x, weight, bias = autocast_operands(x, weight, bias, derived)
        eager_cpu = eager_channels_last_cpu(x)  # on a GPU (host-bound at batch 1): False after the device check
        if kernels and eager_cpu and is_pointwise(conv) and x.dtype == weight.dtype:
            return pointwise_gemm(x, weight, bias, residual, relu)
        # a weight that trains drops its packed copy (fused optimizers update it without a version bump)
        if (derived is not None and prepack and eager_cpu and not derived.training(weight)
                and cls._onednn_applies(conv, x, weight, PREPACKED_DTYPES)):
            blocked = derived.get(conv, x, weight)
            if blocked is not None:
                y = cls._prepacked_conv(conv, x, blocked, bias, relu)
                return y if residual is None else cls._add_residual(y, residual)
        if relu and kernels and cls._onednn_relu_applies(conv, x, weight):
            return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *_onednn_geometry(conv), 'relu', [], '')
        y = conv._conv_forward(x, weight, bias)
        # ReLU and residual in place into the fresh output (the conv's backward does not read it): no second map
        if relu:
            return y.relu_()
        return y if residual is None else cls._add_residual(y, residual)

    @staticmethod
    def _add_residual(y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``residual + y``, in place into ``y`` (a conv's fresh output) where the sum keeps its shape and dtype."""
        same = residual.shape == y.shape and residual.dtype == y.dtype
        return y.add_(residual) if same else residual + y

    def train(self, mode: bool = True) -> 'FusedConv2d':
        self._derived_weights.clear()  # as DerivedCache asks of its owner: weights swapped through .data, then a switch
        return super().train(mode)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``relu(conv(x))`` or ``residual + conv(x)`` (or ``conv(x)``)."""
        return self.apply_to(self, x, self.weight, self.bias, residual, self.relu, self.use_fused_kernel,
                             self._derived_weights, self.prepack_weights)

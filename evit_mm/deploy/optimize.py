"""Deploy-time rewrites of a whole model (backbone, neck, head) that keep its outputs up to float rounding, and the
opt-in move to bfloat16 weights, which does not."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..models.fused_conv import FusedConv2d
from ..models.layers import Residual
from ..models.roi_align import SeparableRoIAlign, convert_roi_aligns
from ..models.winograd import DEFAULT_TILE, WinogradConv2d, convert_to_winograd
from .bfloat16 import Bfloat16Forward, run_in_bfloat16, warn_where_bfloat16_is_slow
from .cuda_graphs import CudaGraphForward, use_cuda_graphs
from .dense_parts import parts_wrapped_by


@dataclass
class DeploySummary:
    """What a model runs after :func:`optimize_for_inference`: each count and list is read from the model's modules,
    so a later call reports the same model (with what it added), except ``batch_norms_folded``, which counts what
    that call folded."""

    fused: str | None  # the module whose switch_to_deploy ran (Conv+BN folding, fused kernels), if any
    winograd_convs: int  # 3x3 convolutions now computed by Winograd F(m x m, 3x3) on CPU
    winograd_relus: int = 0  # ReLUs of mmcv ConvModules now applied inside those convolutions
    winograd_tile: int = DEFAULT_TILE  # the largest output tile m of those convolutions
    batch_norms_folded: int = 0  # BatchNorms outside switch_to_deploy (necks, heads) folded into their convs
    roi_aligns: int = 0  # mmcv RoIAlign layers (two-stage detectors) now computed as matrix products on CPU
    bfloat16_parts: tuple[str, ...] = ()  # parts on bfloat16 weights (float32 in and out)
    identities_folded: int = 0  # depthwise residuals x + DW(x) computed by their conv alone (Residual.fold_identity)
    prepacked_convs: int = 0  # deployed convs whose CPU oneDNN path takes weights reordered once (FusedConv2d)
    cuda_graph_parts: tuple[str, ...] = ()  # parts replaying CUDA graphs at inference on a GPU

    def __str__(self) -> str:
        tiles = 'F(2x2,3x3)' if self.winograd_tile == 2 else (
            f'F({self.winograd_tile}x{self.winograd_tile},3x3) (F(2x2,3x3) on small maps and in bfloat16)')
        return (f'deploy: Conv+BN folded in {self.fused or "nothing (no switch_to_deploy)"}'
                + (f' ({self.identities_folded} depthwise residuals with the identity in their kernel)'
                   if self.identities_folded else '')
                + (f' (weights prepacked for oneDNN on CPU: on in {self.prepacked_convs} convs)'
                   if self.prepacked_convs else '')
                + f' and {self.batch_norms_folded} other BatchNorms folded into their convs; '
                f'{self.winograd_convs} 3x3 convolutions on Winograd {tiles} for CPU inference '
                f'(plain convolutions elsewhere), {self.winograd_relus} with their ReLU'
                + (f'; {self.roi_aligns} RoIAlign layers as matrix products on CPU' if self.roi_aligns else '')
                + (f'; {", ".join(self.bfloat16_parts)} on bfloat16 weights (float32 in and out)'
                   if self.bfloat16_parts else '')
                + (f'; {", ".join(self.cuda_graph_parts)} replayed from CUDA graphs on a GPU'
                   if self.cuda_graph_parts else ''))


def optimize_for_inference(model: nn.Module, fused_kernels: bool | None = None, winograd: bool = True,
                           winograd_tile: int = DEFAULT_TILE, fold_batch_norms: bool = True,
                           roi_align: bool = True, bfloat16: bool = False,
                           prepack_weights: bool = True, cuda_graphs: bool = False) -> DeploySummary:
    """Prepare ``model`` (a detector, segmentor, classifier or backbone) for inference, in place.

    1. ``switch_to_deploy`` of the model (classifiers: backbone and heads) or else of its backbone: BatchNorm
       folded into the convolutions and, with ``fused_kernels`` (None: where measured faster, AVX2 CPUs), ReLUs
       run inside them and 1x1 convolutions run as GEMMs that start from the bias or the residual (CPU); with
       ``prepack_weights``, the convolutions oneDNN runs on CPU take their weights reordered once per input shape
       (:class:`~evit_mm.models.fused_conv.FusedConv2d`).
    2. With ``fold_batch_norms``, every other BatchNorm that follows a convolution (UperNet's and FPN heads'
       ConvModules, another backbone such as ResNet) is folded into it by mmcv's ``fuse_conv_bn``: one pass over
       each map fewer.
    3. With ``winograd``, every other 3x3 stride-1 convolution (FPN outputs, RetinaNet/FCN heads) becomes a
       :class:`~evit_mm.models.winograd.WinogradConv2d`, faster on CPU for wide maps and many channels and
       unchanged elsewhere (GPU, autograd, tracing, small maps): F(4x4, 3x3) on batches of at least 1024 pixels in
       all and F(2x2, 3x3) on smaller ones, or F(2x2, 3x3) everywhere with ``winograd_tile=2``. Outputs move by a
       few 1e-6 relative to their scale, as much as the direct float32 convolution's own rounding does. The ReLU
       of an mmcv ``ConvModule`` around such a conv, without a norm or with its norm folded, moves into it (its
       ``activate=False`` argument then no longer removes the ReLU; OpenMMLab heads do not use it).
    4. With ``roi_align``, every mmcv ``RoIAlign`` (the RoI extractors of Mask R-CNN and other two-stage detectors)
       becomes a :class:`~evit_mm.models.roi_align.SeparableRoIAlign`: in average mode, for CPU float32
       inference, two small GEMMs per RoI on the channels-last maps instead of mmcv's single-threaded NCHW kernel
       (same values up to float rounding); mmcv's op elsewhere.
    5. With ``bfloat16`` (off by default: not exact), the backbone, neck and dense heads run on bfloat16 weights
       with float32 inputs and outputs (:func:`~evit_mm.deploy.bfloat16.run_in_bfloat16`; RoI heads and
       post-processing stay float32). Faster where the hardware multiplies bfloat16 (CPUs with AVX512-BF16 or AMX,
       GPUs); features move by about 1% of their scale. Their 3x3 convolutions take Winograd F(2x2, 3x3) (F(4x4)
       amplifies bfloat16's rounding too much); a CPU without native bfloat16 gets a warning (it would run slower
       than float32).
    6. With ``cuda_graphs`` (off by default: each input shape keeps a graph and its memory on the GPU), the same
       dense parts replay CUDA graphs of their forward pass at inference on a GPU, one per input shape
       (:func:`~evit_mm.deploy.cuda_graphs.use_cuda_graphs`): a call costs one launch instead of hundreds, which is
       what bounds EfficientViT on a GPU. Same kernels, same values; CPU, training and tracing unchanged.

    The model should not be trained afterwards (BatchNorm is gone); tracing and ONNX export still work.
    """
    target = model if hasattr(model, 'switch_to_deploy') else getattr(model, 'backbone', None)
    fused = None
    if target is not None and hasattr(target, 'switch_to_deploy'):
        if 'fused_kernels' in inspect.signature(target.switch_to_deploy).parameters:  # evit_mm's own
            target.switch_to_deploy(fused_kernels=fused_kernels, prepack_weights=prepack_weights)
        else:
            target.switch_to_deploy()
        fused = type(target).__name__
    folded = _fold_batch_norms(model) if fold_batch_norms else 0
    if bfloat16:
        run_in_bfloat16(model)
        parameter = next(model.parameters(), None)
        warn_where_bfloat16_is_slow('cpu' if parameter is None else parameter.device, 'bfloat16 deploy')
    if winograd:
        convert_to_winograd(model, tile=winograd_tile)
        _relus_into_winograd(model)
    if roi_align:
        convert_roi_aligns(model)
    # counted in the model, not in what this call changed: a second call reports the same model
    converted = sum(isinstance(m, WinogradConv2d) for m in model.modules())
    relus = sum(isinstance(m, WinogradConv2d) and m.relu for m in model.modules())
    roi_aligns = sum(isinstance(m, SeparableRoIAlign) for m in model.modules())
    identities = sum(isinstance(m, Residual) and m.identity_in_branch for m in model.modules())
    prepacked = sum(isinstance(m, FusedConv2d) and m.prepack_weights for m in model.modules())
    if cuda_graphs:
        use_cuda_graphs(model)  # last: graphs record what the parts became
    return DeploySummary(fused, converted, relus, winograd_tile, folded, roi_aligns,
                         parts_wrapped_by(model, Bfloat16Forward), identities, prepacked,
                         parts_wrapped_by(model, CudaGraphForward))


def _fold_batch_norms(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a ``Conv2d`` among its siblings into that conv (mmcv's
    ``fuse_conv_bn``; the BatchNorm becomes ``nn.Identity``). Returns how many were folded."""
    from mmcv.cnn import fuse_conv_bn

    def count() -> int:
        return sum(isinstance(m, _BatchNorm) for m in model.modules())
    before = count()
    fuse_conv_bn(model)
    return before - count()


def _relus_into_winograd(model: nn.Module) -> int:
    """Move the ReLU of every mmcv ``ConvModule`` without a norm or with its norm folded (RetinaNet, FCN and UperNet
    head convs) into its Winograd conv, which applies it while the output is in cache. Returns how many moved."""
    from mmcv.cnn import ConvModule
    moved = 0
    for module in model.modules():
        if (isinstance(module, ConvModule) and isinstance(module.conv, WinogradConv2d)
                and (not module.with_norm or isinstance(module.norm, nn.Identity))
                and module.with_activation and type(module.activate) is nn.ReLU
                and tuple(module.order) == ('conv', 'norm', 'act')):
            module.conv.relu = True
            module.with_activation = False  # ConvModule.forward skips its own activation
            moved += 1
    return moved

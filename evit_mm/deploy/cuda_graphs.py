"""Inference of a module's forward pass replayed from CUDA graphs, one graph per input shape.

Why: on a GPU, EfficientViT's forward pass is bound by the host, not by the GPU. On an H200 the deployed M4
backbone took about 11 ms per call at batch 1 and 12 ms per batch of 256, while its kernels took 5.4 ms of GPU
time at batch 256 (``docs/benchmarks.md``, "Issue 8 on a GPU"): Python, the dispatcher and about 300 kernel
launches per call. A CUDA graph records the kernels of one call and replays them with a single launch.

``torch.compile(mode="reduce-overhead")`` also replays CUDA graphs, but it compiles the model first, and recompiles
for new input shapes; a detector at batch 1 on COCO meets a new padded shape for many images (keep-ratio resizing,
padded to a multiple of 32). This module captures the eager model as it runs (a few warm-up calls and one capture
per shape, no compilation), which is what makes graphs usable for detection and segmentation inference with mmdet
and mmseg.

Rules (:class:`CudaGraphForward`): a call is replayed only while no autograd graph is recorded (``no_grad`` or
``inference_mode``), the module is in eval mode, every tensor among the arguments is on the same CUDA device, and
no other graph is being captured or compiled; every other call runs the module eagerly. A graph is keyed on the
arguments' structure, shapes, strides and dtypes, on the non-tensor arguments, and on the numerics the kernels were
chosen under (autocast, inference mode, TF32), so a call never replays a graph captured under other settings. The
outputs are copies: a graph overwrites its outputs on every replay, so returned tensors stay valid after later
calls. A graph computes with the weights as they were captured (a module in eval mode also caches weights derived
from them, such as folded BatchNorms): change weights after :func:`stop_cuda_graphs` only. The least recently used
graph is dropped beyond ``max_graphs``.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch
from torch import nn
from torch.utils._pytree import TreeSpec, tree_flatten, tree_map_only

from ..compat.torch_api import get_autocast_dtype, is_autocast_enabled
from ..models.derived_cache import retaining_served_values
from ..models.eager_kernels import exporting_or_compiling
from .dense_parts import dense_parts

#: Default most graphs kept per module: each holds its own intermediate memory (for deployed RetinaNet-EViT-M4 at
#: 800x1333, tens of MB in float16).
DEFAULT_MAX_GRAPHS = 8
#: Types of the non-tensor arguments a graphed call may have (part of the graph's key); a call with any other
#: (data samples, ...) runs eagerly.
KEY_TYPES = (type(None), bool, int, float, str, torch.dtype)
#: Eager calls on a side stream before a capture: cuDNN's algorithm search, lazily built caches (attention biases)
#: and lazy CUDA initialisation must happen outside the graph; three is what ``torch.cuda.make_graphed_callables``
#: does by default.
WARMUP_CALLS = 3


class _Graph:
    """One captured call: its static input tensors (refilled before each replay), the graph, its outputs, and the
    cached tensors the call read (folded weights, gathered attention biases), held so that their memory stays theirs
    when their caches move on."""

    def __init__(self, forward: Callable, args: tuple, kwargs: dict, device: torch.device) -> None:
        static_args, static_kwargs = tree_map_only(torch.Tensor, torch.clone, (args, kwargs))
        self.static_leaves = tree_flatten((static_args, static_kwargs))[0]  # refilled before each replay
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        # a weight cast by autocast and cached outside the graph would be freed when the autocast region ends while
        # the graph still reads it: with the cache off, the casts are recorded into the graph
        autocast_cache = torch.is_autocast_cache_enabled()
        torch.set_autocast_cache_enabled(False)
        try:
            with torch.cuda.device(device):  # the graph's device, whichever is current
                with torch.cuda.stream(stream):
                    for _ in range(WARMUP_CALLS):
                        forward(*static_args, **static_kwargs)
                torch.cuda.current_stream(device).wait_stream(stream)
                self.graph = torch.cuda.CUDAGraph()
                with retaining_served_values() as self.derived, torch.cuda.graph(self.graph):
                    self.outputs = forward(*static_args, **static_kwargs)
        finally:
            torch.set_autocast_cache_enabled(autocast_cache)

    def replay(self, leaves: list) -> object:
        """The outputs for a call whose flattened arguments are ``leaves`` (of the captured call's description)."""
        for static, new in zip(self.static_leaves, leaves, strict=True):
            if isinstance(static, torch.Tensor):
                static.copy_(new)
        self.graph.replay()
        return tree_map_only(torch.Tensor, torch.clone, self.outputs)


#: torch < 2.2's ``TreeSpec`` is an unhashable dataclass; its text then stands for it in the keys
_TREE_SPECS_HASHABLE = TreeSpec.__hash__ is not None


def graph_key(leaves: list, spec: TreeSpec) -> Hashable | None:
    """What a graph of a call with these flattened arguments is captured for (module docstring), or None where a
    non-tensor argument is not of :data:`KEY_TYPES`."""
    if not all(isinstance(leaf, (torch.Tensor, *KEY_TYPES)) for leaf in leaves):
        return None
    described = tuple((tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.device)
                      if isinstance(leaf, torch.Tensor) else (type(leaf), leaf) for leaf in leaves)
    numerics = (torch.is_inference_mode_enabled(), is_autocast_enabled('cuda'),
                get_autocast_dtype('cuda'), torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32)
    return (spec if _TREE_SPECS_HASHABLE else str(spec)), described, numerics


class CudaGraphForward:
    """A module's ``forward`` that replays CUDA graphs of it on a GPU at inference (rules: module docstring).

    Installed as the module's instance attribute ``forward`` (:func:`use_cuda_graphs`), so that it also serves
    callers that call ``self.forward(...)`` directly (mmseg's decode heads do).

    Args:
        module: The module whose forward pass is graphed.
        forward: The forward pass to run eagerly and to capture (the module's ``forward`` before this one).
        max_graphs: Most graphs kept (one per input shape and setting), the least recently used dropped first.
    """

    def __init__(self, module: nn.Module, forward: Callable, max_graphs: int = DEFAULT_MAX_GRAPHS) -> None:
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise ValueError(f'max_graphs must be a positive integer (graphs kept per module), got {max_graphs!r}')
        self.module, self.forward, self.max_graphs = module, forward, max_graphs
        self.graphs: OrderedDict[Hashable, _Graph] = OrderedDict()
        self.captures = 0  # graphs captured so far (more than len(graphs) once some were dropped)

    def __call__(self, *args, **kwargs):
        leaves, spec = tree_flatten((args, kwargs))
        device = self._graph_device(leaves)
        key = None if device is None else graph_key(leaves, spec)
        if key is None:
            return self.forward(*args, **kwargs)
        graph = self.graphs.get(key)
        if graph is None:
            try:
                graph = _Graph(self.forward, args, kwargs, device)
            except RuntimeError as error:
                raise RuntimeError(
                    f'capturing a CUDA graph of {type(self.module).__name__} failed ({error}); run it without '
                    'graphs: evit_mm.deploy.stop_cuda_graphs(model), or optimize_for_inference(..., '
                    'cuda_graphs=False)') from error
            self.graphs[key] = graph
            self.captures += 1
            while len(self.graphs) > self.max_graphs:
                self.graphs.popitem(last=False)
        self.graphs.move_to_end(key)
        return graph.replay(leaves)

    def _graph_device(self, leaves: list) -> torch.device | None:
        """The CUDA device a call with these flattened arguments can be replayed on, or None where it must run
        eagerly."""
        if torch.is_grad_enabled() or self.module.training or exporting_or_compiling():
            return None
        devices = {leaf.device for leaf in leaves if isinstance(leaf, torch.Tensor)}
        if len(devices) != 1:
            return None
        device = devices.pop()
        if device.type != 'cuda' or torch.cuda.is_current_stream_capturing():
            return None
        return device

    def __deepcopy__(self, memo: dict) -> CudaGraphForward:
        """A copy with no graphs, serving the copied module (CUDA graphs cannot be copied)."""
        return CudaGraphForward(copy.deepcopy(self.module, memo), copy.deepcopy(self.forward, memo),
                                self.max_graphs)

    def __getstate__(self) -> dict:
        return dict(self.__dict__, graphs=OrderedDict(), captures=0)


def use_cuda_graphs(model: nn.Module, max_graphs: int = DEFAULT_MAX_GRAPHS) -> tuple[str, ...]:
    """Make the dense parts of ``model`` (backbone, neck, dense heads: :func:`~.dense_parts.dense_parts`; a bare
    backbone whole) replay CUDA graphs at inference on a GPU (:class:`CudaGraphForward`), in place. Returns the
    names of the parts. Elsewhere (CPU, training, autograd, tracing, compiling) they run as before. Calling it again
    changes nothing more; :func:`stop_cuda_graphs` undoes it."""
    parts = dense_parts(model)
    for part in parts.values():
        if not isinstance(part.__dict__.get('forward'), CudaGraphForward):
            part.forward = CudaGraphForward(part, part.forward, max_graphs)
    return tuple(parts)


def stop_cuda_graphs(model: nn.Module) -> None:
    """Undo :func:`use_cuda_graphs` on every module of ``model``, dropping their graphs."""
    for module in model.modules():
        wrapper = module.__dict__.get('forward')
        if isinstance(wrapper, CudaGraphForward):
            inner = wrapper.forward  # the class's forward, or another wrapper's (Bfloat16Forward)
            if getattr(inner, '__self__', None) is module and getattr(inner, '__func__', None) is type(module).forward:
                del module.forward
            else:
                module.forward = inner

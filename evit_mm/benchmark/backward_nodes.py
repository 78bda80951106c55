"""Where a backward pass spends its time, per autograd node type, timed without the profiler.

``torch.profiler`` adds a fixed cost to every operator it records, and on this project's CPU it also inflated
memory-bound operators inside the training step several-fold (an im2col gather: 2.5 ms per call under the profiler,
0.87 ms timed directly; ``docs/benchmarks.md``), which is too much to compare two models that differ by 10-20%.
Here each node of the graph gets a pre-hook and a post-hook (``Node.register_prehook`` / ``register_hook``) that
read the clock around the node's own work; the engine runs CPU nodes one at a time, so the times add up to the
pass, minus the engine's bookkeeping between nodes. On a GPU the hooks synchronize the device, which serializes the
pass: the times then say what each node costs, not how the overlapped pass performs.
"""
from __future__ import annotations

import collections
import statistics
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from ..models.grad_layout import memory_format_of
from .timing import synchronize

#: Node names, and the saved tensor whose shape tells their layers apart (see :func:`node_key`).
_SHAPED_NODES = {'ConvolutionBackward0': '_saved_weight', 'NativeBatchNormBackward0': '_saved_input',
                 'ReluBackward0': '_saved_result'}


def graph_nodes(root: torch.autograd.graph.Node) -> list[torch.autograd.graph.Node]:
    """Every node reachable from ``root`` (the ``grad_fn`` of a loss), each once."""
    seen, stack, nodes = set(), [root], []
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        nodes.append(node)
        stack.extend(child for child, _ in node.next_functions)
    return nodes


def node_key(node: torch.autograd.graph.Node, by_shape: bool = False) -> str:
    """The node's name; with ``by_shape``, convolution nodes add their weight's shape, BatchNorm and ReLU nodes their
    map's shape and whether it is channels-last (``cl``), so that layers of one model can be told apart."""
    name = node.name()
    attribute = _SHAPED_NODES.get(name)
    if not by_shape or attribute is None:
        return name
    tensor = getattr(node, attribute)
    layout = ' cl' if memory_format_of(tensor) == torch.channels_last else ''
    return f'{name}{tuple(tensor.shape)}{layout}'


def time_backward_nodes(loss: torch.Tensor, by_shape: bool = False) -> tuple[dict[str, float], float]:
    """Run ``loss.backward()`` and return the seconds spent in each kind of node (summed over nodes of the same
    :func:`node_key`) and the wall-clock seconds of the whole pass.

    Raises:
        ValueError: ``loss`` is not the output of a graph (no ``grad_fn``).
    """
    if loss.grad_fn is None:
        raise ValueError('loss has no grad_fn: compute it with gradients enabled from a model in training mode')
    spent: dict[str, float] = collections.defaultdict(float)
    started: dict[torch.autograd.graph.Node, float] = {}
    for node in graph_nodes(loss.grad_fn):
        key = node_key(node, by_shape)

        def before(grad_outputs, node=node):
            synchronize(loss.device)
            started[node] = time.perf_counter()

        def after(grad_inputs, grad_outputs, node=node, key=key):
            synchronize(loss.device)
            spent[key] += time.perf_counter() - started.pop(node)

        node.register_prehook(before)
        node.register_hook(after)
    synchronize(loss.device)
    start = time.perf_counter()
    loss.backward()
    synchronize(loss.device)
    return dict(spent), time.perf_counter() - start


def backward_breakdown(models: Mapping[str, nn.Module], loss_of: Callable[[nn.Module], torch.Tensor],
                       warmup: int = 2, repeats: int = 6, by_shape: bool = False
                       ) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Median seconds per node kind and median wall seconds of the backward pass of each model, the models taking
    turns (one pass each per round, after ``warmup`` rounds without hooks).

    Args:
        models: The models by name, in training mode.
        loss_of: Runs a model's forward pass and returns its scalar loss.
        by_shape: Key convolution and BatchNorm nodes by shape (:func:`node_key`).

    Returns:
        ``{model: {node kind: seconds}}`` (a kind missing from a round counts 0 there) and ``{model: seconds}``.
    """
    def zero_grad_and_loss(model: nn.Module) -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        return loss_of(model)

    for _ in range(warmup):
        for model in models.values():
            zero_grad_and_loss(model).backward()
    samples = {name: [] for name in models}
    walls = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            spent, wall = time_backward_nodes(zero_grad_and_loss(model), by_shape)
            samples[name].append(spent)
            walls[name].append(wall)
    nodes = {name: {key: statistics.median(s.get(key, 0.0) for s in runs)
                    for key in set().union(*runs)} for name, runs in samples.items()}
    return nodes, {name: statistics.median(w) for name, w in walls.items()}


def format_breakdown(nodes: Mapping[str, Mapping[str, float]], walls: Mapping[str, float], top: int = 25) -> str:
    """The ``top`` node kinds by their largest time in any model, as a Markdown table in milliseconds, with the
    sum over all node kinds and the pass's wall clock in the last two rows."""
    names = list(nodes)
    keys = sorted(set().union(*nodes.values()), key=lambda k: -max(nodes[n].get(k, 0.0) for n in names))
    lines = [f'| backward node | {" | ".join(f"{n} ms" for n in names)} |', '|---|' + '---|' * len(names)]
    for key in keys[:top]:
        lines.append(f'| {key} | ' + ' | '.join(f'{nodes[n].get(key, 0.0) * 1e3:.2f}' for n in names) + ' |')
    lines.append('| all nodes | ' + ' | '.join(f'{sum(nodes[n].values()) * 1e3:.1f}' for n in names) + ' |')
    lines.append('| backward pass, wall clock | ' + ' | '.join(f'{walls[n] * 1e3:.1f}' for n in names) + ' |')
    return '\n'.join(lines)

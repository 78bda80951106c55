"""``torch.compile`` as the benchmarks apply it."""
from __future__ import annotations

import argparse

import torch
from torch import nn

#: ``torch.compile`` modes the tools accept. ``reduce-overhead`` replays CUDA graphs: on a GPU, where EfficientViT
#: is bound by kernel launches even at batch 256 (docs/benchmarks.md, H200), it removes the launch overhead.
COMPILE_MODES = ('default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs')


def compiled(model: nn.Module, mode: str = 'default', freezing: bool = False) -> nn.Module:
    """``torch.compile(model, mode=mode)`` with one static graph per input shape.

    Args:
        model: The module to compile (not changed; the compiled wrapper is returned).
        mode: One of :data:`COMPILE_MODES`.
        freezing: Let inductor treat the weights as constants (Conv+BN folding, weight prepacking); for
            inference only. This sets inductor's process-wide ``freezing`` flag (``torch.compile`` takes either a
            mode or inductor options, not both), which stays on for later compilations in the process.

    Raises:
        ValueError: ``mode`` is not one of :data:`COMPILE_MODES`.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f'unknown compile mode {mode!r}; choose one of {COMPILE_MODES}')
    if freezing:
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True
    # dynamic=False: one graph per shape; automatic dynamic-shape recompiles crashed in inductor's CPU conv codegen
    return torch.compile(model, mode=mode, dynamic=False)


def add_compile_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--compile`` (``what`` is compiled, mode ``default``) and ``--compile-mode MODE`` (implies ``--compile``);
    read them back with :func:`compile_mode_from`."""
    parser.add_argument('--compile', action='store_true', help=f'torch.compile {what}')
    parser.add_argument('--compile-mode', choices=COMPILE_MODES,
                        help='torch.compile mode (implies --compile; reduce-overhead replays CUDA graphs)')


def compile_mode_from(args: argparse.Namespace) -> str | None:
    """The ``torch.compile`` mode the options of :func:`add_compile_arguments` ask for; None: no compilation."""
    return args.compile_mode or ('default' if args.compile else None)

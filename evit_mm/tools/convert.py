"""Checkpoint conversion behind ``tools/convert_checkpoint.py``."""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch

from ..benchmark.inputs import count_type
from ..checkpoint import CheckpointMismatchError, load_backbone_state_dict, read_checkpoint, to_backbone_state_dict
from ..checkpoint.arch_match import matching_archs
from ..models import EfficientViT
from ..models.backbones.efficientvit import ARCH_SETTINGS


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, arch: str | None = None,
                       window_size: int | Sequence[int] = 7, prefix: str | None = None) -> tuple[str, int]:
    """Load ``src`` into an ``EfficientViT(arch, window_size)`` (validating every key and shape) and write its
    state dict to ``dst`` (``.safetensors`` or a torch file holding ``{'state_dict': ...}``).

    Args:
        arch: The variant (``'m0'`` ... ``'m5'``); None: the one whose weights the checkpoint holds.

    Returns:
        The arch written and the number of tensors.

    Raises:
        CheckpointMismatchError: If the checkpoint does not fit ``arch``, or ``arch`` is None and its weights are
            those of no variant in the arch table.
    """
    state_dict = to_backbone_state_dict(read_checkpoint(src), prefix=prefix)
    if arch is None:
        archs = matching_archs(state_dict)
        if not archs:
            raise CheckpointMismatchError(f'{os.fspath(src)}: the weights match no EfficientViT arch '
                                          f'({", ".join(ARCH_SETTINGS)}); pass --arch to see which weights are '
                                          'missing or mis-shaped')
        arch = archs[0]
    model = EfficientViT(arch, window_size=window_size)
    load_backbone_state_dict(model, state_dict, os.fspath(src))
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    dst = os.fspath(dst)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(state_dict, dst, metadata={'arch': str(arch), 'format': 'evit_mm-backbone'})
    else:
        torch.save({'state_dict': state_dict, 'meta': {'arch': str(arch), 'format': 'evit_mm-backbone'}}, dst)
    return arch, len(state_dict)


def main(argv: list[str] | None = None) -> int:
    """``tools/convert_checkpoint.py``."""
    parser = argparse.ArgumentParser(description='Write a clean evit_mm backbone checkpoint from an official, timm '
                                                 'or evit_mm (classifier/detector/segmentor) EfficientViT checkpoint.')
    parser.add_argument('src', help='source checkpoint: local path, URL or hf-hub:ORG/NAME[@REVISION]')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument('--arch', choices=sorted(ARCH_SETTINGS),
                        help='EfficientViT arch the checkpoint belongs to (default: the one whose weights it holds)')
    parser.add_argument('--window-size', type=count_type(1), nargs='+', default=[7],
                        help='attention window per stage (one value for all, or one per stage); 7 = dense '
                             'prediction geometry')
    parser.add_argument('--prefix', default=None, help="backbone key prefix in SRC (auto: 'backbone.' if present)")
    args = parser.parse_args(argv)
    window = args.window_size[0] if len(args.window_size) == 1 else tuple(args.window_size)
    try:  # the backbone's own rule for window sizes, before the file is read: built on meta, nothing allocated
        with torch.device('meta'):
            EfficientViT(args.arch or 'm4', window_size=window)  # every built-in arch has 3 stages
    except ValueError as error:
        parser.error(f'--window-size: {error}')
    arch, count = convert_checkpoint(args.src, args.dst, arch=args.arch, window_size=window, prefix=args.prefix)
    print(f'wrote {count} tensors of EfficientViT-{arch.upper()} to {args.dst}')
    return 0

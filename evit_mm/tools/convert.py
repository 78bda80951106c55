"""Checkpoint conversion behind ``tools/convert_checkpoint.py``: clean evit_mm backbone checkpoints, and timm
classifier files from ImageNet classifiers (an evit_mm pretraining run's, the official release's)."""
from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

import torch

from ..benchmark.inputs import count_type
from ..checkpoint import CheckpointMismatchError, load_backbone_state_dict, read_checkpoint, to_backbone_state_dict
from ..checkpoint.arch_match import matching_archs
from ..models import EfficientViT, EfficientViTClassifier
from ..models.backbones.efficientvit import ARCH_SETTINGS

#: What ``--to`` writes: evit_mm's backbone checkpoint, or the state dict of timm's ``efficientvit_m*`` classifier.
OUTPUT_FORMATS = ('evit_mm-backbone', 'timm')


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
    arch = arch or _arch_of(state_dict, src)
    model = EfficientViT(arch, window_size=window_size)
    load_backbone_state_dict(model, state_dict, os.fspath(src))
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    _save(state_dict, dst, {'arch': str(arch), 'format': 'evit_mm-backbone'}, wrap=True)
    return arch, len(state_dict)


def _arch_of(backbone_state_dict: dict[str, torch.Tensor], src: str | os.PathLike) -> str:
    archs = matching_archs(backbone_state_dict)
    if not archs:
        raise CheckpointMismatchError(f'{os.fspath(src)}: the weights match no EfficientViT arch '
                                      f'({", ".join(ARCH_SETTINGS)}); pass --arch to see which weights are '
                                      'missing or mis-shaped')
    return archs[0]


def _save(state_dict: dict[str, torch.Tensor], dst: str | os.PathLike, meta: dict[str, str], wrap: bool) -> None:
    """Write ``state_dict`` as safetensors (``.safetensors``, with ``meta``) or a torch file: ``{'state_dict', 'meta'}``
    where ``wrap``, else the bare state dict (what timm's ``pytorch_model.bin`` holds)."""
    dst = os.fspath(dst)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if dst.endswith('.safetensors'):
        from safetensors.torch import save_file
        save_file(state_dict, dst, metadata=meta)
    else:
        torch.save({'state_dict': state_dict, 'meta': meta} if wrap else state_dict, dst)


def export_timm_classifier(src: str | os.PathLike, dst: str | os.PathLike, arch: str | None = None) -> tuple[str, int]:
    """Write the ImageNet classifier in ``src`` (evit_mm's ``EfficientViTClassifier``, official or timm) as the state
    dict of timm's ``efficientvit_{arch}`` with the same number of classes, so that timm users load it with
    ``timm.create_model(..., pretrained=True, pretrained_cfg_overlay=dict(file=DST, num_classes=N))``.

    The weights pass through the evit_mm classifier (strict loading, at timm's 224x224 window geometry) and are
    loaded strictly into timm's model, whose logits must equal the classifier's before anything is written.

    Returns:
        The arch and the number of classes.

    Raises:
        CheckpointMismatchError: If ``src`` holds no classification head, a distillation head (timm's model has none,
            so its logits would differ from the source's), bias tables for other windows than timm's (resized, they
            would change the logits too), or weights of no (or another) arch.
    """
    import timm

    checkpoint = read_checkpoint(src)
    state = EfficientViTClassifier.convert_checkpoint(checkpoint)  # official head.l named head.linear
    head = state.get('head.linear.weight')
    if head is None:
        raise CheckpointMismatchError(f'{os.fspath(src)}: no classification head (head.linear.weight or head.l.weight) '
                                      'to export; timm classifiers come from ImageNet classifier checkpoints, a '
                                      'backbone, detector or segmentor checkpoint converts with --to evit_mm-backbone')
    if any(k.startswith('head_dist.') for k in state):
        raise CheckpointMismatchError(f'{os.fspath(src)}: has a distillation head (head_dist), which timm\'s '
                                      'efficientvit_m* lacks: its logits would not be the checkpoint\'s '
                                      '(the official model averages both heads)')
    arch = arch or _arch_of(to_backbone_state_dict(checkpoint), src)
    classifier = EfficientViTClassifier(dict(type='EfficientViT', arch=arch), num_classes=head.shape[0])
    try:  # strict, and no bias table resized: tables of other windows would give other logits than the source's
        classifier.load_state(state, os.fspath(src), adapt_shapes=False)
    except CheckpointMismatchError as error:
        raise CheckpointMismatchError(f"{os.fspath(src)}: {error} (timm's efficientvit_{arch} at 224x224 has windows "
                                      '(7, 7, 4); tables for other windows are not resized for timm, which would '
                                      'change the logits)') from None
    state_dict = {k.removeprefix('backbone.'): v.contiguous() for k, v in classifier.state_dict().items()}
    reference = timm.create_model(f'efficientvit_{arch}', pretrained=False, num_classes=head.shape[0])
    reference.load_state_dict(state_dict, strict=True)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = classifier.eval()(images), reference.eval()(images)
    torch.testing.assert_close(theirs, ours, atol=1e-4 * float(ours.abs().max()), rtol=1e-4)
    _save(state_dict, dst, {'arch': str(arch), 'format': 'timm', 'num_classes': str(head.shape[0])}, wrap=False)
    return arch, head.shape[0]


def main(argv: list[str] | None = None) -> int:
    """``tools/convert_checkpoint.py``."""
    parser = argparse.ArgumentParser(description='Write a clean evit_mm backbone checkpoint from an official, timm '
                                                 'or evit_mm (classifier/detector/segmentor) EfficientViT checkpoint; '
                                                 "with --to timm, an ImageNet classifier as timm's efficientvit_m*.")
    parser.add_argument('src', help='source checkpoint: local path, URL or hf-hub:ORG/NAME[@REVISION]')
    parser.add_argument('dst', help='output file (.pth or .safetensors)')
    parser.add_argument('--to', choices=OUTPUT_FORMATS, default=OUTPUT_FORMATS[0],
                        help="what DST holds: evit_mm's backbone checkpoint (default), or timm's efficientvit_m* "
                             'classifier with its head (from an ImageNet classifier checkpoint)')
    parser.add_argument('--arch', choices=sorted(ARCH_SETTINGS),
                        help='EfficientViT arch the checkpoint belongs to (default: the one whose weights it holds)')
    parser.add_argument('--window-size', type=count_type(1), nargs='+',
                        help='attention window per stage (one value for all, or one per stage); default 7, the '
                             'dense prediction geometry (backbone output only)')
    parser.add_argument('--prefix', default=None, help="backbone key prefix in SRC (auto: 'backbone.' if present)")
    args = parser.parse_args(argv)
    if args.to == 'timm':
        given = [option for option, value in (('--window-size', args.window_size), ('--prefix', args.prefix)) if value]
        if given:
            parser.error(f"{', '.join(given)}: for --to evit_mm-backbone only (timm's classifier has its own window "
                         'geometry at 224x224, and the classifier checkpoint its own key names)')
        arch, classes = export_timm_classifier(args.src, args.dst, arch=args.arch)
        print(f"wrote timm's efficientvit_{arch} ({classes} classes) to {args.dst}; load it with timm.create_model("
              f"'efficientvit_{arch}', pretrained=True, pretrained_cfg_overlay=dict(file='{args.dst}', "
              f'num_classes={classes}))')
        return 0
    window_sizes = args.window_size or [7]
    window = window_sizes[0] if len(window_sizes) == 1 else tuple(window_sizes)
    try:  # the backbone's own rule for window sizes, before the file is read: built on meta, nothing allocated
        with torch.device('meta'):
            EfficientViT(args.arch or 'm4', window_size=window)  # every built-in arch has 3 stages
    except ValueError as error:
        parser.error(f'--window-size: {error}')
    arch, count = convert_checkpoint(args.src, args.dst, arch=args.arch, window_size=window, prefix=args.prefix)
    print(f'wrote {count} tensors of EfficientViT-{arch.upper()} to {args.dst}')
    return 0

"""Publishing a trained model, behind ``tools/publish_model.py``.

A training checkpoint holds the optimizer's state, the schedulers, mmengine's message hub and, with EMA, a second
copy of the weights (mmengine's ``EMAHook`` leaves the averaged weights in ``state_dict``): several times the size of
the weights, and objects that torch's plain ``weights_only`` loader refuses without evit_mm's allowlist. The
published file holds the weights and plain metadata (the dataset's classes, which mmdet's and mmseg's inferencers
read, the config text, the epoch), loads with ``torch.load(weights_only=True)`` anywhere, and is named with the first
8 hex digits of its SHA-256, as OpenMMLab's ``publish_model.py`` names the files of its model zoos; torch.hub checks
that prefix when it downloads such a file (``check_hash=True``).
"""
from __future__ import annotations

import argparse
import hashlib
import os
from pathlib import Path

import torch

from ..checkpoint import CheckpointReadError, read_checkpoint, unwrap_state_dict

#: Metadata of an mmengine training checkpoint that the published file keeps (plain strings, numbers and tuples).
PUBLISHED_META_KEYS = ('dataset_meta', 'cfg', 'epoch', 'iter', 'seed', 'experiment_name', 'mmengine_version')

HASH_DIGITS = 8


def file_sha256(path: str | os.PathLike) -> str:
    """The hex SHA-256 of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as file:
        for block in iter(lambda: file.read(1 << 20), b''):
            digest.update(block)
    return digest.hexdigest()


def destination_problem(src: str | os.PathLike, dst: str | os.PathLike) -> str | None:
    """Why ``dst`` cannot take the published ``src`` (not a ``.pth`` name, or the source file itself), or None."""
    if Path(dst).suffix != '.pth':
        return f'the published file is a torch file: give a name ending in .pth, got {os.fspath(dst)!r}'
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        return (f'{os.fspath(dst)!r} is the source checkpoint: publishing there would replace the training state it '
                f'holds; give another name')
    return None


def publish_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> tuple[Path, int]:
    """Write the weights and plain metadata of the checkpoint ``src`` (a path, URL or ``hf-hub:`` name) to ``dst``
    with the SHA-256 prefix added to its name (``model.pth`` -> ``model-1a2b3c4d.pth``).

    Returns:
        The published file's path and the number of tensors it holds.

    Raises:
        ValueError: If ``dst`` does not end in ``.pth`` or is ``src`` itself.
        CheckpointReadError: If ``src`` holds no weights.
    """
    problem = destination_problem(src, dst)
    if problem:
        raise ValueError(problem)
    dst = Path(dst)
    checkpoint = read_checkpoint(src)
    try:
        state_dict = unwrap_state_dict(checkpoint)
    except ValueError as error:
        raise CheckpointReadError(f'{os.fspath(src)}: {error}') from None
    meta = checkpoint.get('meta') if isinstance(checkpoint.get('meta'), dict) else {}
    published = {'state_dict': {key: value.contiguous() for key, value in state_dict.items()},
                 'meta': {key: meta[key] for key in PUBLISHED_META_KEYS if key in meta}}
    dst.parent.mkdir(parents=True, exist_ok=True)
    torch.save(published, dst)
    final = dst.with_name(f'{dst.stem}-{file_sha256(dst)[:HASH_DIGITS]}{dst.suffix}')
    dst.replace(final)
    return final, len(state_dict)


def main(argv: list[str] | None = None) -> int:
    """``tools/publish_model.py``."""
    parser = argparse.ArgumentParser(description='Publish a trained model: its weights and plain metadata (classes, '
                                                 'config) without optimizer or training state, named with the '
                                                 'SHA-256 prefix of its contents.')
    parser.add_argument('src', help='training checkpoint (work_dirs/.../epoch_12.pth), URL or hf-hub:ORG/NAME')
    parser.add_argument('dst', help='output .pth file; the published name adds -<sha256[:8]> before .pth')
    args = parser.parse_args(argv)
    problem = destination_problem(args.src, args.dst)
    if problem:
        parser.error(problem)
    final, count = publish_checkpoint(args.src, args.dst)
    print(f'wrote {count} tensors to {final} ({final.stat().st_size / 2**20:.1f} MiB)')
    return 0

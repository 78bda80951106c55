"""Reading checkpoint files safely: torch pickles weights only (``compat.safe_checkpoints.load_weights_only``),
safetensors otherwise.

Where a checkpoint can come from: a local file, a URL (through torch.hub's cache) or a Hugging Face Hub model
repository, ``hf-hub:ORG/NAME[@REVISION]`` (the prefix timm uses; timm's EfficientViT weights are
``hf-hub:timm/efficientvit_m4.r224_in1k`` and the like), through the hub's own cache, so that
``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE`` and mirrors work as they do for timm.
"""
from __future__ import annotations

import os
import pickle
import re
import urllib.error
import urllib.parse
from collections.abc import Callable
from typing import Any

import torch

from ..compat.safe_checkpoints import load_weights_only
from .errors import CheckpointReadError

HF_HUB_PREFIX = 'hf-hub:'
#: Files of a Hub model repository that hold its weights, in the order tried (timm's order: safetensors first).
HF_HUB_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
_HF_REPO_ID = re.compile(r'[\w.-]+/[\w.-]+')


def is_url(path: str) -> bool:
    return path.startswith(('http://', 'https://'))


def parse_hf_hub(name: str) -> tuple[str, str | None]:
    """``'hf-hub:ORG/NAME[@REVISION]'`` -> ``(repo_id, revision)`` (``revision`` None: the default branch).

    Raises:
        ValueError: If ``name`` is not of that form.
    """
    spec = name[len(HF_HUB_PREFIX):] if name.startswith(HF_HUB_PREFIX) else ''
    repo_id, _, revision = spec.partition('@')
    if not _HF_REPO_ID.fullmatch(repo_id) or (spec.count('@') and not revision):
        raise ValueError(f'bad Hugging Face Hub checkpoint {name!r}: write hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION '
                         '(e.g. hf-hub:timm/efficientvit_m4.r224_in1k)')
    return repo_id, revision or None


def download_from_hf_hub(name: str) -> str:
    """The local path of the weights of Hub repository ``name`` (``hf-hub:ORG/NAME[@REVISION]``), downloaded into
    the hub's cache unless already there: the first of :data:`HF_HUB_WEIGHT_FILES` the repository has.

    Raises:
        ValueError: If ``name`` is malformed.
        FileNotFoundError: If none of those files can be had (not in the cache while offline, or not in the repo).
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    repo_id, revision = parse_hf_hub(name)
    offline = constants.is_offline_mode()
    for filename in HF_HUB_WEIGHT_FILES:
        try:
            return hf_hub_download(repo_id, filename, revision=revision)
        except LocalEntryNotFoundError:  # not in the cache, and the hub is offline or unreachable: try the next
            reason = (f'in the hub cache {constants.HF_HUB_CACHE}, '
                      + ('and offline mode is on' if offline else 'and the hub could not be reached'))
        except EntryNotFoundError:  # the repository does not have it: try the next file
            reason = 'in the repository'
    raise FileNotFoundError(f'checkpoint {name!r}: none of {", ".join(HF_HUB_WEIGHT_FILES)} found {reason}; '
                            f'download it (`hf download {repo_id} {HF_HUB_WEIGHT_FILES[0]}` where the hub is '
                            'reachable) or give a local file or URL')


def local_checkpoint(path: str | os.PathLike) -> str:
    """``path`` as mmengine's checkpoint loader takes it: a Hub name (``hf-hub:ORG/NAME[@REVISION]``) becomes the
    local file in the hub's cache (:func:`download_from_hf_hub`); local paths and URLs are returned as they are.

    Raises:
        FileNotFoundError: If a local path does not exist (the tools call this before building anything, so that a
            mistyped checkpoint is named before a missing dataset or a model build), or a Hub repository's weights
            cannot be had.
        ValueError: If an ``hf-hub:`` name is malformed.
    """
    path = os.fspath(path)
    if path.startswith(HF_HUB_PREFIX):
        return download_from_hf_hub(path)
    if not is_url(path) and not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path!r} (give a local .pth/.safetensors file, a URL or '
                                f'{HF_HUB_PREFIX}ORG/NAME)')
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = 'cpu') -> dict[str, Any]:
    """Read a checkpoint from a local file (``.pth``/``.pt``/``.bin`` or ``.safetensors``), a URL or a Hugging Face
    Hub repository (``hf-hub:ORG/NAME[@REVISION]``).

    Torch pickles are read weights only (:func:`~evit_mm.compat.safe_checkpoints.load_weights_only`): a file that
    holds arbitrary Python objects is refused rather than executed. URLs go through torch.hub's cache (downloaded
    once, then read from there; not hash-checked, as the official release's file names carry no hash), Hub
    repositories through the Hugging Face Hub's cache (:func:`download_from_hf_hub`).

    Raises:
        FileNotFoundError: If a local path does not exist, a URL cannot be downloaded, or a Hub repository's
            weights cannot be had.
        ValueError: If an ``hf-hub:`` name is malformed.
        CheckpointReadError: If the file cannot be read as weights (empty, damaged, not a torch or safetensors
            file, or pickling objects other than weights).
    """
    path = os.fspath(path)
    if is_url(path):
        return _read_torch_file(path, lambda: _download(path, map_location))
    path = local_checkpoint(path)
    if path.endswith('.safetensors'):
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(path, device=str(map_location))
        except SafetensorError as error:
            raise CheckpointReadError(f'cannot read checkpoint {path!r} as a safetensors file: {error}') from error
    return _read_torch_file(path, lambda: load_weights_only(path, map_location))


def _download(url: str, map_location: str | torch.device) -> dict[str, Any]:
    """``url`` through torch.hub's cache (``<hub dir>/checkpoints/<file name>``, read before downloading, as
    ``torch.hub.load_state_dict_from_url`` does), read by :func:`load_weights_only`; where it cannot be fetched, an
    error that says where the file may be put by hand (offline clusters), instead of urllib's traceback."""
    cached = os.path.join(torch.hub.get_dir(), 'checkpoints', os.path.basename(urllib.parse.urlparse(url).path))
    if not os.path.isfile(cached):
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, cached, progress=False)
        except urllib.error.URLError as error:  # HTTPError too
            raise FileNotFoundError(f'cannot download checkpoint {url!r} ({getattr(error, "reason", error)}); where '
                                    f'this machine is offline, fetch it elsewhere and put it at {cached!r} '
                                    "(torch.hub's cache, read before downloading) or give its local path "
                                    'instead') from error
    return load_weights_only(cached, map_location)


_ACCEPTED = 'give a file written by torch.save (a state dict, or a checkpoint dict holding one) or a .safetensors file'
_UNSUPPORTED_GLOBAL = re.compile(r'unsupported global(?:: GLOBAL)? (\S+)', re.IGNORECASE)  # also a blocked module's
_UNPICKLER_REASON = re.compile(r'WeightsUnpickler error:\s*(.+)')


def _read_torch_file(source: str, load: Callable[[], Any]) -> Any:
    """``load()``, with torch's errors for files it cannot read as weights turned into one
    :class:`CheckpointReadError` that names the file, the cause and what to do (torch's own messages say
    "Unsupported operand 35" for a text file and nothing at all for an empty one)."""
    try:
        return load()
    except pickle.UnpicklingError as error:
        text = str(error)
        if found := _UNSUPPORTED_GLOBAL.search(text):
            raise CheckpointReadError(
                f'checkpoint {source!r} holds Python objects besides weights ({found.group(1)}), and they are not '
                'unpickled: unpickling can run arbitrary code (torch.load(weights_only=True)). From a copy you '
                "trust, save the weights alone: torch.save(torch.load(FILE, weights_only=False)['state_dict'], "
                "'weights.pth') (or the whole model's .state_dict())") from error
        reason = found.group(1).strip() if (found := _UNPICKLER_REASON.search(text)) else text.partition('\n')[0]
        raise CheckpointReadError(f'cannot read checkpoint {source!r}: not a file torch.save wrote ({reason}); '
                                  f'{_ACCEPTED}') from error
    except EOFError as error:
        raise CheckpointReadError(f'cannot read checkpoint {source!r}: the file is empty or cut short; '
                                  f'{_ACCEPTED}') from error
    except RuntimeError as error:  # a damaged zip archive (a partial download or copy)
        if 'PytorchStreamReader' not in str(error):
            raise
        cause = str(error).split('.')[0]
        raise CheckpointReadError(f'cannot read checkpoint {source!r}: the file is damaged ({cause}); download or '
                                  'copy it again') from error

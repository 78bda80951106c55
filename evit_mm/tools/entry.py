"""How the scripts in ``tools/`` end: bad input with its message and exit status 1, not a traceback."""
from __future__ import annotations

from collections.abc import Callable

from ..checkpoint import CheckpointError
from ..models.backbones import ImageInputError
from .config_options import ConfigOptionError
from .preflight import PreflightError


def run(main: Callable[[list[str]], int], argv: list[str]) -> int | str:
    """Call ``main(argv)``; a :class:`PreflightError`, an option the config cannot take (:class:`ConfigOptionError`),
    a :class:`CheckpointError` (unreadable, or not fitting), images the backbone cannot take
    (:class:`ImageInputError`: a ``--shape`` under 16x16) or a missing file (config, checkpoint) becomes the string
    ``'error: ...'``, which ``sys.exit`` prints to stderr with exit status 1."""
    try:
        return main(argv)
    except (PreflightError, ConfigOptionError, CheckpointError, ImageInputError, FileNotFoundError) as error:
        return f'error: {error}'

"""Checks of constructor arguments shared by the backbone and the neck."""
from __future__ import annotations

import numbers
from typing import Any


def is_int(value: Any) -> bool:
    """An integer (Python's or numpy's, as configs built in code may hold), not a bool (``True`` is an int)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)

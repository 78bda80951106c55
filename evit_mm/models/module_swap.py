"""Replacing submodules in place, for the deploy-time rewrites (Winograd convs, RoIAlign as matrix products)."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn


def replace_modules(model: nn.Module, matches: Callable[[nn.Module], bool],
                    replacement: Callable[[nn.Module], nn.Module]) -> int:
    """Replace, in place, every submodule of ``model`` for which ``matches`` holds with ``replacement(module)``
    (the replacements themselves are not searched). Returns how many were replaced."""
    replaced = 0
    for name, child in list(model.named_children()):
        if matches(child):
            setattr(model, name, replacement(child))
            replaced += 1
        else:
            replaced += replace_modules(child, matches, replacement)
    return replaced

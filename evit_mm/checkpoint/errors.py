"""The errors checkpoint problems a user can fix raise (``tools/`` print them without a traceback)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint problem the user can fix: the file, or what it holds."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint is not an EfficientViT checkpoint, or does not provide every weight of the model with a usable
    shape."""


class CheckpointReadError(CheckpointError):
    """A checkpoint file cannot be read: empty, truncated, not written by ``torch.save`` or safetensors, or holding
    Python objects beyond weights, which are not unpickled (``torch.load(weights_only=True)``)."""

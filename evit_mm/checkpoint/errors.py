"""The error every checkpoint problem a user can fix raises (``tools/`` print it without a traceback)."""
from __future__ import annotations


class CheckpointMismatchError(ValueError):
    """A checkpoint is not an EfficientViT checkpoint, or does not provide every weight of the model with a usable
    shape."""


class CheckpointReadError(ValueError):
    """A checkpoint file cannot be read: empty, truncated, not written by ``torch.save`` or safetensors, or holding
    Python objects beyond weights, which are not unpickled (``torch.load(weights_only=True)``)."""

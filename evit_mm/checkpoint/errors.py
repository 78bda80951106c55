"""The error every checkpoint problem a user can fix raises (``tools/`` print it without a traceback)."""
from __future__ import annotations


class CheckpointMismatchError(ValueError):
    """A checkpoint is not an EfficientViT checkpoint, or does not provide every weight of the model with a usable
    shape."""

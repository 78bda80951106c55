"""What the backbone checks about the images it is given, so that a wrong batch stops with a message naming the
problem and the fix instead of torch's ("expected scalar type Byte but found Float", "Given groups=1, weight of size
[16, 3, 3, 3], expected input[1, 64, 64, 3] to have 3 channels").

Every check reads shapes, dtypes and devices only: no data, no synchronisation with a GPU.
"""
from __future__ import annotations

import torch

from ...compat.torch_api import is_autocast_enabled


class ImageInputError(ValueError):
    """Images the backbone cannot take (layout, channels, dtype, device, size, a batch of one too small to train its
    BatchNorms); the tools print its message as one line, as they do bad arguments."""


def check_image_layout(images: torch.Tensor, in_channels: int) -> None:
    """Raise :class:`ImageInputError` unless ``images`` is an ``(N, in_channels, H, W)`` batch.

    Args:
        images: What the backbone was called with.
        in_channels: The channels the backbone was built for.
    """
    if images.dim() == 4 and images.shape[1] == in_channels:
        return  # every call: no message built unless it is needed (host time on GPUs at batch 1)
    shape = tuple(images.shape)
    expected = f'EfficientViT expects a batch of images (N, {in_channels}, H, W)'
    if images.dim() == 3 and shape[0] == in_channels:
        raise ImageInputError(f'{expected}, got one image of shape {shape}: add the batch dimension (images[None])')
    if images.dim() != 4:
        raise ImageInputError(f'{expected}, got a {images.dim()}-d tensor of shape {shape}')
    if shape[1] != in_channels:
        if shape[3] == in_channels:
            fix = 'it looks channels-last (N, H, W, C): pass images.permute(0, 3, 1, 2)'
        else:
            fix = f'build the backbone with in_channels={shape[1]}, or convert the images'
        raise ImageInputError(f'{expected}, got shape {shape}: {fix}')


def check_image_dtype_and_device(images: torch.Tensor, weight: torch.Tensor) -> None:
    """Raise :class:`ImageInputError` unless ``images`` are floating point, of ``weight``'s dtype (under
    ``torch.autocast``, which casts them, any floating dtype but float64: autocast leaves float64 as it is) and on
    its device.

    Args:
        images: What the backbone was called with.
        weight: The first convolution's weight: the dtype and device the backbone computes in.
    """
    if not images.is_floating_point():
        raise ImageInputError(
            f'EfficientViT expects floating-point images, got {images.dtype}: normalise them first (in a detector or '
            f"segmentor the data_preprocessor does, with the config's mean and std), or convert them with .float()")
    if images.device != weight.device:
        raise ImageInputError(f'EfficientViT is on {weight.device} but the images are on {images.device}: move one '
                              f'of them (images.to({str(weight.device)!r}) or model.to({str(images.device)!r}))')
    if images.dtype != weight.dtype and (images.dtype == torch.float64
                                         or not is_autocast_enabled(images.device.type)):
        raise ImageInputError(
            f'EfficientViT has {weight.dtype} weights but the images are {images.dtype}: convert one of them '
            f'(images.to({weight.dtype}) or model.to({images.dtype})), or run under torch.autocast')

"""Reading, converting and loading EfficientViT checkpoints (official, timm, evit_mm)."""
from .convert import (detect_format, rename_official_backbone_keys, resize_attention_biases, to_backbone_state_dict,
                      to_timm_state_dict, unwrap_state_dict)
from .errors import CheckpointError, CheckpointMismatchError, CheckpointReadError
from .io import local_checkpoint, read_checkpoint
from .load import adapt_state_dict, load_backbone_state_dict, load_pretrained, pretrained_checkpoint

__all__ = ['CheckpointError', 'CheckpointMismatchError', 'CheckpointReadError', 'adapt_state_dict', 'detect_format',
           'load_backbone_state_dict', 'load_pretrained', 'local_checkpoint', 'pretrained_checkpoint',
           'read_checkpoint', 'rename_official_backbone_keys', 'resize_attention_biases', 'to_backbone_state_dict',
           'to_timm_state_dict', 'unwrap_state_dict']

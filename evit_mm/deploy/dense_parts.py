"""The dense parts of an OpenMMLab model: what the deploy-time wrappers of a part's ``forward`` apply to."""
from __future__ import annotations

from torch import nn

#: Top-level parts of OpenMMLab models whose forward pass maps feature tensors to feature tensors: backbone, neck
#: and the dense heads (single-stage detection heads, RPN, segmentation decode heads). RoI heads (as many RoIs as
#: proposals), auxiliary heads (unused at inference) and classifier heads are left out. A model with none of them
#: (a bare backbone) counts as one part.
DENSE_PARTS = ('backbone', 'neck', 'rpn_head', 'bbox_head', 'decode_head')


def dense_parts(model: nn.Module) -> dict[str, nn.Module]:
    """The parts of ``model`` named in :data:`DENSE_PARTS`, or ``{'model': model}`` where it has none."""
    parts = {name: getattr(model, name) for name in DENSE_PARTS if isinstance(getattr(model, name, None), nn.Module)}
    return parts or {'model': model}


def parts_wrapped_by(model: nn.Module, wrapper: type) -> tuple[str, ...]:
    """The dense parts of ``model`` whose ``forward`` is wrapped, at any depth of the chain of deploy-time wrappers
    (each keeps the forward it wraps as ``.forward``), by an instance of ``wrapper``."""
    def wrapped(forward: object) -> bool:
        while forward is not None and not isinstance(forward, wrapper):
            forward = getattr(forward, 'forward', None)  # a bound method (the chain's end) has none
        return forward is not None
    return tuple(name for name, part in dense_parts(model).items() if wrapped(part.__dict__.get('forward')))

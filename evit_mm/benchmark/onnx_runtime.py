"""ONNX Runtime timing of an exported backbone (CPU execution provider, or CUDA where onnxruntime-gpu is)."""
from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ..deploy.onnx_export import export_onnx


def session_options():
    """ONNX Runtime options for a fair comparison with PyTorch in the same process: as many intra-op threads as
    torch uses (``--threads``; ONNX Runtime's default is every physical core), and no spin-waiting between runs
    (its idle threads otherwise keep spinning on the cores that the next timed PyTorch call needs: timm's backbone
    measured 1.2-1.4x slower right after ONNX Runtime calls on 2 cores)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return options


def onnx_backbone_call(backbone: torch.nn.Module, opts) -> Callable[[], object]:
    """One ONNX Runtime call of ``backbone`` exported at the options' batch and size (on ``opts.device``'s execution
    provider, CPU as the fallback), as a callable to time; the session holds the model, so the file is gone after."""
    import onnxruntime as ort
    x = torch.randn(opts.batch_size, 3, opts.height, opts.width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'backbone.onnx'
        export_onnx(copy.deepcopy(backbone).cpu().eval(), x, path)  # a copy: the target stays on its device
        providers = ['CUDAExecutionProvider', 'CPUExecutionProvider'] if opts.device.startswith('cuda') \
            else ['CPUExecutionProvider']
        session = ort.InferenceSession(str(path), session_options(), providers=providers)
    feed = {session.get_inputs()[0].name: x.numpy()}
    return lambda: session.run(None, feed)

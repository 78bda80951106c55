"""ONNX Runtime timing of an exported backbone (CPU execution provider, or CUDA where onnxruntime-gpu is)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..deploy.onnx_export import export_onnx
from .timing import Timing, time_interleaved


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


def onnx_backbone_timing(backbone: torch.nn.Module, opts) -> Timing:
    import onnxruntime as ort
    x = torch.randn(opts.batch_size, 3, opts.height, opts.width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'backbone.onnx'
        export_onnx(backbone.cpu().eval(), x, path)
        providers = ['CUDAExecutionProvider', 'CPUExecutionProvider'] if opts.device.startswith('cuda') \
            else ['CPUExecutionProvider']
        session = ort.InferenceSession(str(path), session_options(), providers=providers)
        feed = {session.get_inputs()[0].name: x.numpy()}
        timings = time_interleaved({'total': lambda: session.run(None, feed)}, opts.batch_size, opts.warmup,
                                   opts.repeats, None, opts.time_budget)
    return timings['total']

"""ONNX Runtime timing of an exported backbone (CPU execution provider, or CUDA where onnxruntime-gpu is)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import torch

from ..deploy.onnx_export import export_onnx
from .timing import Timing, time_interleaved


def onnx_backbone_timing(backbone: torch.nn.Module, opts) -> Timing:
    import onnxruntime as ort
    x = torch.randn(opts.batch_size, 3, opts.height, opts.width)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / 'backbone.onnx'
        export_onnx(backbone.cpu().eval(), x, path)
        providers = ['CUDAExecutionProvider', 'CPUExecutionProvider'] if opts.device.startswith('cuda') \
            else ['CPUExecutionProvider']
        session = ort.InferenceSession(str(path), providers=providers)
        feed = {session.get_inputs()[0].name: x.numpy()}
        timings = time_interleaved({'total': lambda: session.run(None, feed)}, opts.batch_size, opts.warmup,
                                   opts.repeats, None, opts.time_budget)
    return timings['total']

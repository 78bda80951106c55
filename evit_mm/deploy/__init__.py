"""Deployment: whole-model inference rewrites, ONNX export with dynamic height and width checked against PyTorch
with ONNX Runtime, ``torch.export`` programs that hold at every size, the allocator setting that spares CPU
inference its page faults, the opt-in bfloat16 weights for hardware that multiplies them natively, and the opt-in
CUDA graphs for GPU inference."""
from .allocator import AllocatorSettings, keep_freed_memory
from .bfloat16 import native_bfloat16, run_in_bfloat16
from .cuda_graphs import stop_cuda_graphs, use_cuda_graphs
from .onnx_export import check_onnx, export_onnx
from .optimize import DeploySummary, optimize_for_inference
from .program_export import SizeSpecialisedError, export_program

__all__ = ['AllocatorSettings', 'DeploySummary', 'SizeSpecialisedError', 'check_onnx', 'export_onnx',
           'export_program', 'keep_freed_memory', 'native_bfloat16', 'optimize_for_inference', 'run_in_bfloat16',
           'stop_cuda_graphs', 'use_cuda_graphs']

"""Deployment: whole-model inference rewrites, ONNX export with dynamic height and width checked against PyTorch
with ONNX Runtime, and the allocator setting that spares CPU inference its page faults."""
from .allocator import AllocatorSettings, keep_freed_memory
from .onnx_export import check_onnx, export_onnx
from .optimize import DeploySummary, optimize_for_inference

__all__ = ['AllocatorSettings', 'DeploySummary', 'check_onnx', 'export_onnx', 'keep_freed_memory',
           'optimize_for_inference']

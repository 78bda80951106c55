"""Deployment: whole-model inference rewrites, and ONNX export with dynamic height and width checked against
PyTorch with ONNX Runtime."""
from .onnx_export import check_onnx, export_onnx
from .optimize import DeploySummary, optimize_for_inference

__all__ = ['DeploySummary', 'check_onnx', 'export_onnx', 'optimize_for_inference']

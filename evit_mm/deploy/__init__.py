"""Deployment: ONNX export with dynamic height and width, checked against PyTorch with ONNX Runtime."""
from .onnx_export import check_onnx, export_onnx

__all__ = ['check_onnx', 'export_onnx']

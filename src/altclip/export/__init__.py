"""Exports for runtimes other than PyTorch (``altclip export``): ONNX graphs of both towers (``onnx``)."""

from altclip.export.onnx import export_onnx

__all__ = ["export_onnx"]

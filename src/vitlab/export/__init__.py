"""Export vitlab models (ONNX, TorchScript) and verify the exported files against PyTorch."""
from vitlab.checkpoints.hub import load_model

from .inputs import example_inputs, is_video_model
from .onnx import ExportError, export_onnx, onnx_op_types, onnx_opset
from .torchscript import export_torchscript, load_torchscript
from .verify import DEFAULT_ATOL, Verification, verify_onnx, verify_torchscript

__all__ = ["example_inputs", "is_video_model", "load_model", "ExportError", "export_onnx", "onnx_op_types",
           "onnx_opset", "export_torchscript", "load_torchscript", "DEFAULT_ATOL", "Verification", "verify_onnx",
           "verify_torchscript"]

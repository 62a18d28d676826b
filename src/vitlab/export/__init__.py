"""Export vitlab models (ONNX, TorchScript) and verify the exported files against PyTorch."""
from vitlab.checkpoints.hub import load_model

from .inputs import example_inputs, is_video_model
from .onnx import DynamicSizeError, ExportError, export_onnx, model_stride, onnx_op_types, onnx_opset
from .preprocess import preprocess_config, preprocess_path, write_preprocess
from .torchscript import export_torchscript, load_torchscript
from .verify import DEFAULT_ATOL, Verification, verify_onnx, verify_torchscript

__all__ = ["example_inputs", "is_video_model", "load_model", "ExportError", "DynamicSizeError", "model_stride",
           "export_onnx", "onnx_op_types", "onnx_opset", "export_torchscript", "load_torchscript", "DEFAULT_ATOL", "Verification", "verify_onnx",
           "verify_torchscript", "preprocess_config", "preprocess_path", "write_preprocess"]

"""Check an exported file against the PyTorch model: same outputs on fresh random inputs.

The exported file is reloaded by the runtime that will serve it (onnxruntime, ``torch.jit.load``)
and run on new random inputs (and, for a dynamic-batch export, on a second batch size); the
result is the largest absolute difference per output.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .onnx import ExportError, output_names

DEFAULT_ATOL = 1e-4  # fp32


def flatten_outputs(outputs) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, dict):
        return [t for v in outputs.values() for t in flatten_outputs(v)]
    if isinstance(outputs, (tuple, list)):
        return [t for v in outputs for t in flatten_outputs(v)]
    raise ExportError(f"unexpected model output of type {type(outputs).__name__}")


@dataclass
class Verification:
    """Largest absolute difference per output name, over every batch size tried."""
    format: str
    path: str
    max_abs_diff_per_output: dict[str, float] = field(default_factory=dict)
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max(self.max_abs_diff_per_output.values(), default=float("nan"))

    def ok(self, atol: float = DEFAULT_ATOL) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= atol

    def as_dict(self) -> dict:
        return {"format": self.format, "path": self.path, "max_abs_diff": self.max_abs_diff,
                "max_abs_diff_per_output": self.max_abs_diff_per_output, "batch_sizes": self.batch_sizes}


def onnx_session(path: str | Path, threads: int = 2):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _record(result: Verification, names: list[str], reference: list[torch.Tensor], candidate: list) -> None:
    if len(candidate) != len(reference):
        raise ExportError(f"the exported model returns {len(candidate)} outputs, PyTorch {len(reference)}")
    for name, ref, got in zip(names, reference, candidate):
        ref = ref.detach().float().cpu().numpy()
        got = np.asarray(got, dtype=np.float32)
        if got.shape != ref.shape:
            raise ExportError(f"output {name!r}: exported model gives shape {got.shape}, PyTorch {ref.shape}")
        diff = float(np.abs(got - ref).max()) if ref.size else 0.0
        if not np.isfinite(got).all() and np.isfinite(ref).all():
            diff = float("inf")
        result.max_abs_diff_per_output[name] = max(result.max_abs_diff_per_output.get(name, 0.0), diff)


def _trial_inputs(inputs: tuple, batch_sizes: list[int], seed: int) -> list[tuple]:
    gen = torch.Generator().manual_seed(seed)
    return [tuple(torch.randn((b, *x.shape[1:]), generator=gen, dtype=x.dtype) for x in inputs) for b in batch_sizes]


def verify_onnx(model: nn.Module, path: str | Path, inputs: tuple, dynamic_batch: bool = False,
                seed: int = 0) -> Verification:
    """Run ``path`` in onnxruntime and ``model`` in PyTorch on fresh random inputs shaped like ``inputs``."""
    model.eval()
    batch = inputs[0].shape[0]
    sizes = [batch, batch + 1] if dynamic_batch else [batch]
    session = onnx_session(path)
    feeds = [i.name for i in session.get_inputs()]
    result = Verification("onnx", str(path), batch_sizes=sizes)
    for trial in _trial_inputs(inputs, sizes, seed):
        with torch.no_grad():
            out = model(*trial)
        got = session.run(None, {n: t.numpy() for n, t in zip(feeds, trial)})
        _record(result, output_names(out), flatten_outputs(out), got)
    return result


def verify_torchscript(model: nn.Module, path: str | Path, inputs: tuple, seed: int = 0) -> Verification:
    """Reload the TorchScript file and compare with ``model`` on fresh random inputs of the traced shape."""
    from .torchscript import load_torchscript
    model.eval()
    loaded = load_torchscript(path)
    result = Verification("torchscript", str(path), batch_sizes=[inputs[0].shape[0]])
    for trial in _trial_inputs(inputs, result.batch_sizes, seed):
        with torch.no_grad():
            out = model(*trial)
            got = [t.numpy() for t in flatten_outputs(loaded(*trial))]
        _record(result, output_names(out), flatten_outputs(out), got)
    return result

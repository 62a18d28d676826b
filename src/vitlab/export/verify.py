"""Check an exported file against the PyTorch model: same outputs on fresh random inputs.

The exported file is reloaded by the runtime that will serve it (onnxruntime, ``torch.jit.load``)
and run on new random inputs (and, for a dynamic-batch export, on a second batch size); the
result is the largest absolute difference per output. A file the runtime cannot load or run is an
:class:`~vitlab.export.onnx.ExportError` naming the failing node and operator.

:func:`export_and_verify` is the whole pipeline: export to a temporary file next to the target,
verify it, and only then move it onto the target; on any failure the target is left as it was.
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vitlab.checkpoints.atomic import atomic_path

from .onnx import MAX_OPSET, MIN_OPSET, ExportError, describe_operator, export_onnx, onnx_opset, output_names
from .torchscript import export_torchscript

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
    input_sizes: list[tuple[int, int]] = field(default_factory=list)  # (height, width) of each trial

    @property
    def max_abs_diff(self) -> float:
        return max(self.max_abs_diff_per_output.values(), default=float("nan"))

    def ok(self, atol: float = DEFAULT_ATOL) -> bool:
        return bool(np.isfinite(self.max_abs_diff)) and self.max_abs_diff <= atol

    def as_dict(self) -> dict:
        return {"format": self.format, "path": self.path, "max_abs_diff": self.max_abs_diff,
                "max_abs_diff_per_output": self.max_abs_diff_per_output, "batch_sizes": self.batch_sizes,
                "input_sizes": [list(hw) for hw in self.input_sizes]}


def onnx_session(path: str | Path, threads: int = 2):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 4  # errors come back as exceptions; do not also print them
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


def _trial_inputs(inputs: tuple, batch_sizes: list[int], seed: int, sizes: list | None = None) -> list[tuple]:
    """Random inputs like ``inputs``, one per batch size; ``sizes`` gives each trial's (height, width) of input 0."""
    gen = torch.Generator().manual_seed(seed)
    trials = []
    for i, b in enumerate(batch_sizes):
        shapes = [(b, *x.shape[1:]) for x in inputs]
        if sizes is not None:
            shapes[0] = (*shapes[0][:-2], *sizes[i])
        trials.append(tuple(torch.randn(s, generator=gen, dtype=x.dtype) for s, x in zip(shapes, inputs)))
    return trials


def dynamic_trial_sizes(model: nn.Module, inputs: tuple) -> list[tuple[int, int]]:
    """The (height, width) a dynamic-size file is checked at: ``inputs``' own and two others (stride multiples).

    The two others differ from the size the file was traced at (:func:`vitlab.export.onnx.dynamic_example`),
    one taller than wide and one larger, so a size frozen in the graph shows.
    """
    from .onnx import model_stride
    stride = model_stride(model)
    h, w = (int(v) for v in inputs[0].shape[-2:])
    return [(h, w), (h + 2 * stride, w + stride), (h + stride, max(stride, w - stride))]


def verify_onnx(model: nn.Module, path: str | Path, inputs: tuple, dynamic_batch: bool = False,
                seed: int = 0, dynamic_hw: bool = False) -> Verification:
    """Run ``path`` in onnxruntime and ``model`` in PyTorch on fresh random inputs shaped like ``inputs``.

    ``dynamic_batch`` adds a second batch size; ``dynamic_hw`` checks at :func:`dynamic_trial_sizes`
    (``inputs``' height and width and two others), so a file that only works at one size fails here.
    """
    model.eval()
    batch = inputs[0].shape[0]
    hws = dynamic_trial_sizes(model, inputs) if dynamic_hw else [tuple(int(v) for v in inputs[0].shape[-2:])]
    sizes = [batch, batch + 1] if dynamic_batch else [batch]
    if dynamic_hw:
        sizes = [sizes[i % len(sizes)] for i in range(len(hws))]
    try:
        session = onnx_session(path)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common base class
        raise onnxruntime_failure(model, path, e, "cannot load the file") from e
    feeds = [i.name for i in session.get_inputs()]
    result = Verification("onnx", str(path), batch_sizes=sorted(set(sizes)), input_sizes=list(dict.fromkeys(hws)))
    for trial in _trial_inputs(inputs, sizes, seed, hws if dynamic_hw else None):
        where = f"a batch of {trial[0].shape[0]}"
        if dynamic_hw:
            where += f" at {trial[0].shape[-2]}x{trial[0].shape[-1]}"
        with torch.no_grad():
            try:
                out = model(*trial)
            except Exception as e:  # noqa: BLE001
                if not dynamic_hw:
                    raise
                raise ExportError(f"{_model_name(model)} cannot take a free height/width: PyTorch itself fails on "
                                  f"{where}: {_first_line(e)}") from e
        try:
            got = session.run(None, {n: t.numpy() for n, t in zip(feeds, trial)})
        except Exception as e:  # noqa: BLE001
            raise onnxruntime_failure(model, path, e, f"fails on {where}") from e
        _record(result, output_names(out), flatten_outputs(out), got)
    return result


def verify_torchscript(model: nn.Module, path: str | Path, inputs: tuple, seed: int = 0) -> Verification:
    """Reload the TorchScript file and compare with ``model`` on fresh random inputs of the traced shape."""
    from .torchscript import load_torchscript
    model.eval()
    name = _model_name(model)
    try:
        loaded = load_torchscript(path)
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"torch.jit.load cannot load the TorchScript file of {name}: {_first_line(e)}") from e
    result = Verification("torchscript", str(path), batch_sizes=[inputs[0].shape[0]],
                          input_sizes=[tuple(int(v) for v in inputs[0].shape[-2:])])
    for trial in _trial_inputs(inputs, result.batch_sizes, seed):
        with torch.no_grad():
            out = model(*trial)
            try:
                got = [t.numpy() for t in flatten_outputs(loaded(*trial))]
            except ExportError:
                raise
            except Exception as e:  # noqa: BLE001
                raise ExportError(f"the TorchScript file of {name} loads but fails to run: {_first_line(e)}") from e
        _record(result, output_names(out), flatten_outputs(out), got)
    return result


def _model_name(model: nn.Module) -> str:
    return getattr(model, "model_name", type(model).__name__)


def _first_line(err: BaseException, limit: int = 400) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


# How onnxruntime names the node it failed on, at run time and when loading a file
_ORT_NODE_PATTERNS = (
    (re.compile(r"running (?P<op>[\w.]+) node\. Name:'(?P<node>[^']*)'"), "Status Message:"),
    (re.compile(r"In Node, \(\"(?P<node>[^\"]*)\", (?P<op>[\w.]+),"), ", Error "),
    (re.compile(r"Node \((?P<node>[^)]*)\) Op \((?P<op>[\w.]+)\)"), ") "),
    (re.compile(r"implementation for (?P<op>[\w.]+)\(\d+\) node with name '(?P<node>[^']*)'"), None),
    (re.compile(r"(?:[\w.]+:)?(?P<op>[\w.]+)\(-?\d+\) is not a registered function/op"), None),
)


def parse_onnxruntime_error(message: str) -> tuple[str | None, str | None, str]:
    """(ONNX operator type, node name, what went wrong) from an onnxruntime error message.

    The operator and node are None where the message names none; the explanation has the
    runtime's source location and internal function signature removed.
    """
    op = node = None
    detail = message
    for pattern, detail_marker in _ORT_NODE_PATTERNS:
        match = pattern.search(message)
        if match:
            op, node = match.groupdict().get("op"), match.groupdict().get("node")
            if detail_marker and detail_marker in message[match.end():]:
                detail = message[match.end():].split(detail_marker, 1)[1]
            break
    detail = re.sub(r"^\s*\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*", "", detail)
    detail = re.sub(r"Load model from \S+ failed:\s*", "", detail)
    detail = re.sub(r"^\s*\S+\.(?:h|cc|cpp):\d+\s+", "", detail)  # source location
    detail = re.sub(r"^[\w:~<>]+\((?:[^()]|\([^()]*\))*\)\s*", "", detail)  # C++ signature
    detail = re.sub(r"^[^.]{0,200}? was false\.\s+(?=\S)", "", detail)  # the failed assertion, when a sentence follows
    detail = " ".join(detail.split())
    return op, node, detail[:400] or "no details"


def _node_origin(path: str | Path, node: str, model: nn.Module) -> str:
    """Where a node of the exported file comes from: its aten operator, module and source line where known."""
    parts = []
    try:
        import onnx
        graph = onnx.load(str(path), load_external_data=False).graph
        proto = next((n for n in graph.node if n.name == node), None)
    except Exception:  # noqa: BLE001 - the origin is a courtesy; the error is reported anyway
        proto = None
    meta = {p.key: p.value for p in proto.metadata_props} if proto is not None else {}
    scope = None
    if "pkg.torch.onnx.class_hierarchy" in meta:  # torch.export-based exporter
        try:
            hierarchy = ast.literal_eval(meta["pkg.torch.onnx.class_hierarchy"])
            aten = re.match(r"aten\.(\w+)", hierarchy[-1]) if hierarchy else None
            if aten:
                parts.append(describe_operator(aten.group(1)))
            scopes = ast.literal_eval(meta.get("pkg.torch.onnx.name_scopes", "[]"))
            scope = scopes[-2] if len(scopes) >= 2 and scopes[-2] else None
        except (ValueError, SyntaxError):
            pass
    elif node.startswith("/") and node.count("/") >= 2:  # TorchScript-based exporter: /<module path>/<Op>_<i>
        scope = ".".join(node.strip("/").split("/")[:-1])
    if scope:
        try:
            kind = type(model.get_submodule(scope)).__name__
            parts.append(f"in {scope}: {kind}")
        except AttributeError:
            parts.append(f"in {scope}")
    frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]+(?:\n[ \t]+([^\n]+))?',
                        meta.get("pkg.torch.onnx.stack_trace", ""))
    torch_dir = os.path.dirname(torch.__file__)
    frames = [f for f in frames if not os.path.abspath(f[0]).startswith(torch_dir)] or frames
    if frames:  # the innermost line of the model's own code
        file, line, code = frames[-1]
        parts.append(f"{os.path.basename(file)}:{line}" + (f" `{code.strip()[:80]}`" if code.strip() else ""))
    return ", ".join(parts)


def onnxruntime_failure(model: nn.Module, path: str | Path, err: BaseException, what: str) -> ExportError:
    """One line for an onnxruntime error: the failing node and operator, and the opset to try instead."""
    op, node, detail = parse_onnxruntime_error(str(err))
    try:
        opset = onnx_opset(path)
    except Exception:  # noqa: BLE001 - not even readable as ONNX
        opset = None
    name = _model_name(model)
    if op or node:
        subject = f"the {op or 'ONNX'} node {node!r}" if node else f"the ONNX operator {op}"
        origin = _node_origin(path, node, model) if node else ""
        subject += f" ({origin})" if origin else ""
    else:
        subject = "this graph"
    if opset is not None and opset < 18:
        advice = "export with --opset 18"
    else:
        advice = f"try another --opset ({MIN_OPSET}-{MAX_OPSET}) or --format torchscript"
    at = f"opset {opset}" if opset is not None else "this ONNX file"
    return ExportError(f"ONNX {at} cannot express {subject} of {name} here: onnxruntime {what}: {detail}; {advice}")


def failed_path(path: str | Path, suffix: str) -> Path:
    """Where ``--keep-on-failure`` keeps a file that failed verification: ``model.onnx`` -> ``model.failed.onnx``."""
    path = Path(path)
    stem = path.stem if path.suffix == suffix else path.name
    return path.with_name(f"{stem}.failed{suffix}")


def export_and_verify(model: nn.Module, inputs: tuple, path: str | Path, format: str = "onnx", *, opset: int = 18,
                      dynamic_batch: bool = False, optimize: bool = True, atol: float = DEFAULT_ATOL, seed: int = 1,
                      keep_on_failure: bool = False, dynamic_hw: bool = False) -> Verification:
    """Export ``model`` to ``path`` (``format`` ``"onnx"`` or ``"torchscript"``) only if the file reproduces it.

    The file is written to a temporary file next to ``path``, reloaded by its runtime (onnxruntime,
    ``torch.jit.load``) and compared with PyTorch on fresh random inputs (``seed``); only when every
    output is within ``atol`` is it moved onto ``path`` (atomically). Otherwise :class:`ExportError`
    says why (the failing node and operator, or the measured difference), the temporary file is
    removed and ``path`` is left as it was. With ``keep_on_failure`` a file that was written but
    failed is kept at :func:`failed_path` instead, and the message says so.

    ``dynamic_hw`` (ONNX) leaves height and width free; the file is then checked at three sizes
    (:func:`dynamic_trial_sizes`), so one that is right only at the traced size is refused, never written.
    """
    if format not in ("onnx", "torchscript"):
        raise ValueError(f"format must be 'onnx' or 'torchscript', got {format!r}")
    if format == "torchscript" and dynamic_batch:
        raise ValueError("dynamic_batch applies to ONNX; a traced TorchScript module keeps the shapes it was "
                         "traced with")
    if format == "torchscript" and dynamic_hw:
        raise ValueError("dynamic_hw applies to ONNX; a traced TorchScript module keeps the height and width it "
                         "was traced with")
    if not atol >= 0:
        raise ValueError(f"atol must be a non-negative number, got {atol}")
    path = Path(path)
    suffix = ".onnx" if format == "onnx" else ".pt"
    was_training = model.training
    try:
        with atomic_path(path) as tmp:
            written = False
            try:
                if format == "onnx":
                    export_onnx(model, inputs, tmp, opset=opset, dynamic_batch=dynamic_batch, optimize=optimize,
                                dynamic_hw=dynamic_hw)
                    written = True
                    result = verify_onnx(model, tmp, inputs, dynamic_batch=dynamic_batch, seed=seed,
                                         dynamic_hw=dynamic_hw)
                else:
                    export_torchscript(model, inputs, tmp)
                    written = True
                    result = verify_torchscript(model, tmp, inputs, seed=seed)
                if not result.ok(atol):
                    worst = max(result.max_abs_diff_per_output, key=result.max_abs_diff_per_output.get, default="?")
                    kind = "ONNX" if format == "onnx" else "TorchScript"
                    batches = ", ".join(map(str, result.batch_sizes))
                    if dynamic_hw:
                        batches += "; sizes " + ", ".join(f"{h}x{w}" for h, w in result.input_sizes)
                    raise ExportError(f"the exported {kind} file of {_model_name(model)} differs from PyTorch by "
                                      f"{result.max_abs_diff:.3g} (output {worst!r}, batch {batches}; "
                                      f"allowed --atol {atol:g})")
            except ExportError as e:
                message = str(e)
                if keep_on_failure and written and tmp.exists():
                    kept = failed_path(path, suffix)
                    os.replace(tmp, kept)
                    message += f"; the failed file is kept at {kept}"
                elif keep_on_failure:
                    message += "; nothing to keep: the exporter wrote no file"
                if not path.exists():
                    message += f"; nothing was written to {path}"
                else:
                    message += f"; {path} was left as it was"
                raise ExportError(message) from e
    finally:
        model.train(was_training)
    result.path = str(path)
    return result

"""ONNX export through ``torch.export`` (the exporter PyTorch maintains), with a clear error where a
target opset cannot express an operator.

Opset 18 and later go through the ``torch.export``-based exporter. Opset 17 is first tried the
same way (it converts down from 18); where the converter cannot reach 17 (ONNX has no 18 -> 17
adapter for ``Pad``, so any model using ``F.pad`` stays at 18), the TorchScript-based exporter
writes opset 17 directly, and an operator that opset 17 lacks (``aten::col2im``, i.e.
``F.fold``) is named in the error.

The TorchScript-based exporter translates ``//`` on traced sizes (``aten::floor_divide``) into a
truncating integer ``Div``, so ``-(-n // k)`` (a ceiling) comes out as a floor: a Pale stage
smaller than its pale size got 0 groups and an unrunnable ``Reshape``. Here ``//`` is exported
with PyTorch's rounding (towards minus infinity) instead.

Files are written to a temporary file next to the target and renamed onto it only once the
exporter finished, so a failed export never leaves a file behind (see
:func:`vitlab.export.verify.export_and_verify` for the variant that also checks the file first).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from vitlab.checkpoints.atomic import atomic_path
from vitlab.errors import VitlabError

MIN_OPSET, MAX_OPSET = 17, 23
# PyTorch functions behind aten operators that users meet in error messages
FRIENDLY_OP_NAMES = {"col2im": "F.fold", "im2col": "F.unfold", "roll": "torch.roll",
                     "_scaled_dot_product_flash_attention": "F.scaled_dot_product_attention",
                     "scaled_dot_product_attention": "F.scaled_dot_product_attention",
                     "view": "Tensor.view/reshape", "_unsafe_view": "Tensor.reshape", "reshape": "Tensor.reshape",
                     "constant_pad_nd": "F.pad", "floor_divide": "//", "floordiv": "//", "unfold": "Tensor.unfold"}


class ExportError(VitlabError, RuntimeError):
    """A model could not be written in (or verified against) the requested format; the message says why."""


def output_names(outputs) -> list[str]:
    """Names of the flattened outputs: ``logits`` for one tensor, ``output_<i>`` for a tuple, keys for a dict."""
    if isinstance(outputs, torch.Tensor):
        return ["logits"]
    if isinstance(outputs, dict):
        return [str(k) for k in outputs]
    if isinstance(outputs, (tuple, list)):
        return [f"output_{i}" for i in range(len(outputs))]
    raise ExportError(f"cannot export a model whose output is a {type(outputs).__name__}; "
                      f"expected a tensor, a tuple of tensors or a dict of tensors")


def input_names(inputs: tuple) -> list[str]:
    return ["input"] if len(inputs) == 1 else [f"input_{i}" for i in range(len(inputs))]


def operators_in_error(err: BaseException) -> list[str]:
    """aten operator names mentioned anywhere in an exception chain, e.g. ['col2im']."""
    text, seen = "", set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        text += f"\n{err}"
        err = err.__cause__ or err.__context__
    names = re.findall(r"aten(?:::|\.)([A-Za-z_][A-Za-z0-9_]*)", text)
    return list(dict.fromkeys(n for n in names if n not in ("default", "Tensor")))


def describe_operator(name: str) -> str:
    friendly = FRIENDLY_OP_NAMES.get(name)
    return f"aten::{name}" + (f" ({friendly})" if friendly else "")


def onnx_opset(path: str | Path) -> int:
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))


def onnx_op_types(path: str | Path) -> Counter:
    """How often each ONNX operator type occurs in the graph (including sub-graphs and functions)."""
    import onnx
    model = onnx.load(str(path), load_external_data=False)
    counts: Counter = Counter()

    def walk(graph):
        for node in graph.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)
    walk(model.graph)
    for fn in model.functions:
        for node in fn.node:
            counts[node.op_type] += 1
    return counts


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' progress prints, deprecation warnings and 'torchvision not installed' logs."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _silence_native_output():
    """Drop what C++ code writes to stdout/stderr (the TorchScript-based exporter dumps its whole IR on errors)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def model_stride(model: nn.Module) -> int:
    """The factor input height and width must be multiples of: the coarsest ``feature_info`` reduction."""
    info = getattr(model, "feature_info", None) or getattr(getattr(model, "backbone", None), "feature_info", None)
    reductions = [int(i["reduction"]) for i in info or [] if "reduction" in i]
    if reductions:
        return max(reductions)
    patch = getattr(model, "patch_size", None)
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else 32


def dynamic_example(model: nn.Module, inputs: tuple) -> tuple:
    """Example inputs for a dynamic-size export: one stride taller and two wider than ``inputs``.

    Tracing at the model's own size would freeze branches such as "resize the position embedding only
    when the grid differs", and equal height and width would be unified into one symbol.
    """
    stride = model_stride(model)
    x = inputs[0]
    shape = (*x.shape[:-2], x.shape[-2] + stride, x.shape[-1] + 2 * stride)
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(shape, generator=gen, dtype=x.dtype),) + tuple(inputs[1:])


def _dynamic_shapes(inputs, dynamic_batch: bool, dynamic_hw: bool, stride: int):
    if not (dynamic_batch or dynamic_hw):
        return None
    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1, max=4096)
    if dynamic_hw:
        rank = inputs[0].dim()
        dims[rank - 2] = stride * torch.export.Dim("height_blocks", min=1, max=8192 // stride)
        dims[rank - 1] = stride * torch.export.Dim("width_blocks", min=1, max=8192 // stride)
    return (dims,) + tuple({0: dims[0]} if dynamic_batch else None for _ in inputs[1:])


def _export_dynamo(model, inputs, path, opset, dynamic_batch, names_in, names_out, optimize, dynamic_hw=False):
    dynamic_shapes = _dynamic_shapes(inputs, dynamic_batch, dynamic_hw, model_stride(model) if dynamic_hw else 1)
    # The math SDPA backend traces attention as plain matmul/softmax. The CPU flash kernel that
    # F.scaled_dot_product_attention picks otherwise fails to decompose when an attention mask
    # is given (Swin's shifted windows: "Cannot view a tensor with shape ...").
    with sdpa_kernel(SDPBackend.MATH):
        target = model
        if dynamic_hw:
            # torch.export directly: torch.onnx.export would fall back to a draft export that keeps
            # symbolic sizes on the inputs while freezing them inside (a file wrong at other sizes)
            try:
                target = torch.export.export(model, inputs, dynamic_shapes=dynamic_shapes, strict=False)
            except Exception as e:  # noqa: BLE001 - symbolic sizes the model's Python code cannot handle
                raise _dynamic_failure(model, e) from e
            _check_program_at_another_size(model, target, inputs)
        program = torch.onnx.export(target, inputs, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
                                    input_names=names_in, output_names=names_out, optimize=optimize,
                                    verbose=False, report=False)
    program.save(str(path))


class DynamicSizeError(ExportError):
    """The model cannot be exported with a free height and width; the message says why in one line."""


def _check_program_at_another_size(model, program, inputs) -> None:
    """Run the traced program at a second size against eager PyTorch: a cheap check before ONNX translation."""
    stride = model_stride(model)
    x = inputs[0]
    other = (torch.randn((*x.shape[:-2], x.shape[-2] + stride, x.shape[-1] - stride),
                         generator=torch.Generator().manual_seed(1), dtype=x.dtype),) + tuple(inputs[1:])
    name = getattr(model, "model_name", type(model).__name__)
    size = f"{other[0].shape[-2]}x{other[0].shape[-1]}"
    with torch.no_grad():
        try:
            ref = model(*other)
        except Exception as e:  # noqa: BLE001
            raise DynamicSizeError(f"{name} cannot take a free height/width: PyTorch itself fails at {size}: "
                                   f"{_one_line(e)}") from e
        try:
            got = program.module()(*other)
        except Exception as e:  # noqa: BLE001
            raise DynamicSizeError(f"{name} cannot take a free height/width: its traced graph keeps sizes of the "
                                   f"example input fixed and fails at {size} ({_one_line(e, 200)})") from e
    refs, gots = _tensors(ref), _tensors(got)
    if len(refs) != len(gots) or any(r.shape != g.shape or not torch.allclose(r, g, atol=1e-4, rtol=0)
                                     for r, g in zip(refs, gots)):
        raise DynamicSizeError(f"{name} cannot take a free height/width: its traced graph keeps sizes of the "
                               f"example input fixed and gives other results at {size}")


def _tensors(out) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:limit]


@contextlib.contextmanager
def _floor_division_as_in_pytorch(opset: int):
    """Export ``aten::floor_divide`` / ``aten::floordiv`` rounding towards minus infinity, as PyTorch does.

    The TorchScript-based exporter's own translation truncates towards zero (a leftover of an old
    PyTorch behaviour), which turns ``-(-n // k)`` into ``floor(n / k)`` on traced sizes.
    """
    try:
        from torch.onnx._internal.torchscript_exporter.symbolic_opset9 import _floor_divide
    except ImportError:  # another PyTorch layout: keep the exporter's own translation
        yield
        return
    names = ("aten::floor_divide", "aten::floordiv")
    for name in names:
        torch.onnx.register_custom_op_symbolic(name, _floor_divide, opset)
    try:
        yield
    finally:
        for name in names:
            torch.onnx.unregister_custom_op_symbolic(name, opset)


def _export_torchscript_based(model, inputs, path, opset, dynamic_batch, names_in, names_out, dynamic_hw=False):
    axes = {n: {0: "batch"} for n in names_in + names_out} if dynamic_batch else {}
    if dynamic_hw:  # the image input only; outputs keep what the tracer infers
        rank = inputs[0].dim()
        axes[names_in[0]] = {**axes.get(names_in[0], {}), rank - 2: "height", rank - 1: "width"}
    axes = axes or None
    with _floor_division_as_in_pytorch(opset):
        torch.onnx.export(model, inputs, str(path), dynamo=False, opset_version=opset, input_names=names_in,
                          output_names=names_out, dynamic_axes=axes, do_constant_folding=True)


def python_functions_in_trace(model: nn.Module, inputs: tuple) -> list[str]:
    """Names of Python ``autograd.Function``s a traced forward calls (opaque to TorchScript-based export)."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            graph = torch.jit.trace(model, inputs, check_trace=False, strict=False).inlined_graph
    except Exception:  # noqa: BLE001 - tracing itself failing is reported by the caller
        return []
    return list(dict.fromkeys(n.pyname() for n in graph.nodes() if n.kind() == "prim::PythonOp"))


def _failure(model, opset: int, err: BaseException, inputs: tuple | None = None) -> ExportError:
    name = getattr(model, "model_name", type(model).__name__)
    ops = operators_in_error(err)
    functions = python_functions_in_trace(model, inputs) if inputs is not None and not ops else []
    if functions:
        return ExportError(f"ONNX opset {opset} cannot express {name}: operator prim::PythonOp "
                           f"({', '.join(functions)}, a Python autograd.Function) has no opset-{opset} export; "
                           f"use --opset 18 (exports through torch.export)")
    first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    # the TorchScript-based exporter's own refusals: "Unsupported: ONNX export of operator Unfold, <why>. Please ..."
    refused = re.search(r"ONNX export of operator (\w+)", first_line)
    if refused and not ops:
        said = re.split(r"\s+(?:Please feel free|\[Caused by)", first_line)[0].rstrip(". ")
        hint = " (try --opset 18)" if opset < 18 else ""
        return ExportError(f"ONNX opset {opset} cannot express {name}: operator "
                           f"{describe_operator(refused.group(1).lower())} failed to export{hint}. "
                           f"Exporter said: {said[:400]}")
    if ops:
        which = ", ".join(describe_operator(o) for o in ops[:3])
        hint = " (try --opset 18)" if opset < 18 else ""
        if "Unsupported" in type(err).__name__ or "not supported" in str(err):
            return ExportError(f"ONNX opset {opset} cannot express {name}: operator {which} failed to export{hint}. "
                               f"Exporter said: {first_line[:400]}")
        return ExportError(f"ONNX export of {name} at opset {opset} failed at operator {which}{hint}. "
                           f"Exporter said: {first_line[:400]}")
    return ExportError(f"ONNX export of {name} at opset {opset} failed: {type(err).__name__}: {first_line[:600]}")


def _model_frame(err: BaseException) -> str:
    """``file.py:line `code``` of the innermost frame in vitlab's model code (not the exporter) in a traceback."""
    import traceback
    here = os.path.dirname(os.path.abspath(__file__))
    package = os.path.dirname(here)
    best = None
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        for frame in traceback.extract_tb(err.__traceback__):
            name = os.path.abspath(frame.filename)
            if name.startswith(package) and not name.startswith(here):
                best = frame
        err = err.__cause__ or err.__context__
    if best is None:
        return ""
    code = (best.line or "").strip()[:80]
    return f"{os.path.basename(best.filename)}:{best.lineno}" + (f" `{code}`" if code else "")


def _dynamic_failure(model, err: BaseException) -> DynamicSizeError:
    name = getattr(model, "model_name", type(model).__name__)
    where = _model_frame(err)
    return DynamicSizeError(f"{name} cannot take a free height/width: torch.export fails on symbolic sizes "
                            f"({type(err).__name__}: {_one_line(err, 200)}" + (f", at {where}" if where else "")
                            + "); export it at a fixed size (without --dynamic-size)")


def onnx_input_shape(path: str | Path) -> list:
    """The first input's dimensions: ints, or names for dynamic ones."""
    import onnx
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param if d.dim_param else d.dim_value for d in dims]


def export_onnx(model: nn.Module, inputs: tuple, path: str | Path, opset: int = 18, dynamic_batch: bool = False,
                optimize: bool = True, dynamic_hw: bool = False) -> Path:
    """Write ``model`` (in eval mode) to ``path`` as ONNX at ``opset``; return the path.

    ``inputs`` is the tuple of example tensors (use a batch of 2 or more when ``dynamic_batch``:
    a batch of 1 would be specialised). Raises :class:`ExportError` naming the operator that
    the opset cannot express; ``path`` is then left as it was. The file is not run here: use
    :func:`vitlab.export.verify.export_and_verify` to have it checked in onnxruntime before it
    appears at ``path``.

    ``dynamic_hw`` leaves height and width free (multiples of :func:`model_stride`). The model is
    traced at a size other than ``inputs``' (:func:`dynamic_example`) with ``torch.export``, and the
    traced program is run at a further size against PyTorch before it is translated; a model whose
    graph keeps a size fixed, or that ``torch.export`` cannot trace with symbolic sizes, raises
    :class:`DynamicSizeError` saying why (one line), and no file is written.
    """
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be between {MIN_OPSET} and {MAX_OPSET}, got {opset}")
    if dynamic_batch and inputs[0].shape[0] < 2:
        raise ValueError("a dynamic-batch export needs example inputs with a batch of 2 or more")
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            names_out = output_names(model(*inputs))
        names_in = input_names(inputs)
        if dynamic_hw:
            inputs = dynamic_example(model, inputs)
            with torch.no_grad():
                try:
                    model(*inputs)
                except Exception as e:  # noqa: BLE001 - e.g. a fixed position embedding without interpolation
                    name = getattr(model, "model_name", type(model).__name__)
                    raise DynamicSizeError(f"{name} cannot take a free height/width: PyTorch itself fails at "
                                           f"{inputs[0].shape[-2]}x{inputs[0].shape[-1]}: {_one_line(e, 400)}") from e
        with atomic_path(path) as tmp:
            try:
                with _quiet():
                    _export_dynamo(model, inputs, tmp, max(opset, 18), dynamic_batch, names_in, names_out, optimize,
                                   dynamic_hw)
            except DynamicSizeError:
                raise
            except Exception as e:  # noqa: BLE001 - re-raised with the operator named
                raise _failure(model, opset, e) from e
            if opset < 18 and onnx_opset(tmp) != opset:
                # the down-converter gave up (it keeps 18); write opset 17 with the TorchScript-based exporter
                try:
                    with _quiet(), _silence_native_output():
                        _export_torchscript_based(model, inputs, tmp, opset, dynamic_batch, names_in, names_out,
                                                  dynamic_hw)
                except Exception as e:  # noqa: BLE001
                    raise _failure(model, opset, e, inputs) from e
            if dynamic_hw:
                shape = onnx_input_shape(tmp)
                if any(isinstance(d, int) and d > 0 for d in shape[-2:]):
                    name = getattr(model, "model_name", type(model).__name__)
                    raise DynamicSizeError(f"{name} cannot take a free height/width: the exporter fixed the input "
                                           f"to {shape} while tracing; export it at a fixed size")
    finally:
        model.train(was_training)
    return path

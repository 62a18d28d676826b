"""ONNX / TorchScript export of every family's micro configuration, verified against PyTorch.

Models are discovered with ``vitlab.list_models("*_micro")`` at collection time, so a new family
is covered as soon as it registers its micro configuration.
"""
import contextlib
import inspect
import json
import os
import re
import stat
import subprocess
import sys

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import vitlab
from vitlab.cli.main import main as cli
from vitlab.errors import VitlabError
from vitlab.export import (ExportError, Verification, example_inputs, export_onnx, export_torchscript, load_model,
                           onnx_op_types, onnx_opset, verify_onnx, verify_torchscript)
from vitlab.export.verify import export_and_verify, onnxruntime_failure

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Detectors are left out: their proposal selection and RoI routing have data-dependent shapes, which neither
# ONNX exporter traces (``vitlab export`` says so; see test_detectors_are_refused_with_a_clear_error).
DETECTORS = {"mask_rcnn", "cascade_mask_rcnn"}
MICRO_MODELS = [m for m in vitlab.list_models("*_micro") if vitlab.models.registry.family_of(m) not in DETECTORS]
ATOL = 1e-4


@pytest.fixture(scope="module")
def onnx_exports(tmp_path_factory):
    """name -> (model, inputs, path); each micro model is exported once per test session."""
    folder, cache = tmp_path_factory.mktemp("onnx"), {}

    def get(name):
        if name not in cache:
            torch.manual_seed(0)
            model = load_model(name)
            inputs = example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
            path = export_onnx(model, inputs, folder / f"{name}.onnx", opset=18, optimize=False)
            cache[name] = (model, inputs, path)
        return cache[name]
    return get


@pytest.mark.parametrize("name", MICRO_MODELS)
def test_onnx_export_matches_pytorch(name, onnx_exports):
    model, inputs, path = onnx_exports(name)
    assert onnx_opset(path) == 18
    result = verify_onnx(model, path, inputs, seed=1)
    print(f"{name}: max |onnx - torch| = {result.max_abs_diff:.3g}")
    assert result.max_abs_diff_per_output, "no outputs compared"
    assert result.ok(ATOL), f"{name}: max |onnx - torch| = {result.max_abs_diff:.3g} > {ATOL}"


@pytest.mark.skipif("volo_micro" not in MICRO_MODELS, reason="VOLO is not registered")
def test_volo_exports_without_fold(onnx_exports):
    """Outlook attention is fold-free: no Col2Im (F.fold) and no Im2Col-style unfold loops in the graph."""
    _, _, path = onnx_exports("volo_micro")
    ops = onnx_op_types(path)
    assert "Col2Im" not in ops, f"VOLO's ONNX graph still uses Col2Im (F.fold): {dict(ops)}"


@pytest.mark.skipif("swin_micro" not in MICRO_MODELS, reason="Swin is not registered")
def test_swin_export_covers_shifted_windows(onnx_exports):
    """The parity above includes shifted-window blocks (torch.roll + shift mask), not only plain windows."""
    model, inputs, path = onnx_exports("swin_micro")
    shifts = [m.shift_size for m in model.modules() if hasattr(m, "shift_size")]
    assert any(s > 0 for s in shifts), f"swin_micro has no shifted block (shifts {shifts}); the test would not cover them"
    assert verify_onnx(model, path, inputs, seed=2).ok(ATOL)


@pytest.mark.parametrize("name", MICRO_MODELS)
def test_torchscript_round_trip_or_named_operator(name, tmp_path):
    """TorchScript (traced) reproduces PyTorch, or the error names what TorchScript cannot express."""
    torch.manual_seed(0)
    model = load_model(name)
    inputs = example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    try:
        export_torchscript(model, inputs, tmp_path / f"{name}.pt")
    except ExportError as e:
        assert "TorchScript cannot express" in str(e) and ("operator" in str(e) or "function" in str(e)), str(e)
        return
    assert verify_torchscript(model, tmp_path / f"{name}.pt", inputs, seed=1).ok(ATOL)


class _Fold(nn.Module):
    def forward(self, x):
        return F.fold(x, output_size=(4, 4), kernel_size=2, stride=2)


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 5)

    def forward(self, x):
        return self.fc(F.gelu(self.conv(x)).mean((2, 3))), x.flatten(1)[:, :3]


_TINY_CODE = "return self.fc(F.gelu(self.conv(x)).mean((2, 3))), x.flatten(1)[:, :3]"
_TINY_LINE = inspect.getsourcelines(_Tiny.forward)[1] + 1


def test_opset_17_is_written_when_expressible(tmp_path):
    torch.manual_seed(0)
    model, x = _Tiny(), torch.randn(2, 3, 8, 8)
    path = export_onnx(model, (x,), tmp_path / "tiny.onnx", opset=17, dynamic_batch=True)
    assert onnx_opset(path) == 17
    result = verify_onnx(model, path, (x,), dynamic_batch=True)
    assert set(result.max_abs_diff_per_output) == {"output_0", "output_1"} and result.batch_sizes == [2, 3]
    assert result.ok(ATOL)


def test_opset_17_error_names_the_operator(tmp_path):
    with pytest.raises(ExportError, match=r"opset 17 cannot express .*aten::col2im \(F\.fold\).*--opset 18"):
        export_onnx(_Fold(), (torch.randn(2, 8, 4),), tmp_path / "fold.onnx", opset=17)
    assert not (tmp_path / "fold.onnx").exists() and not list(tmp_path.iterdir())  # no temporary file either
    path = export_onnx(_Fold(), (torch.randn(2, 8, 4),), tmp_path / "fold18.onnx", opset=18)
    assert "Col2Im" in onnx_op_types(path)  # the operator check sees what the graph uses


def test_bad_requests_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="opset must be between 17"):
        export_onnx(_Tiny(), (torch.randn(2, 3, 8, 8),), tmp_path / "x.onnx", opset=11)
    with pytest.raises(ValueError, match="batch of 2 or more"):
        export_onnx(_Tiny(), (torch.randn(1, 3, 8, 8),), tmp_path / "x.onnx", dynamic_batch=True)
    with pytest.raises(ValueError, match="takes images, not clips"):
        example_inputs(vitlab.create_model("volo_micro"), frames=4)


def test_verification_catches_a_wrong_export(tmp_path):
    """A file that computes something else is reported above tolerance (the check is not vacuous)."""
    torch.manual_seed(0)
    model, x = _Tiny(), torch.randn(2, 3, 8, 8)
    path = export_onnx(model, (x,), tmp_path / "tiny.onnx", opset=18)
    with torch.no_grad():
        model.fc.bias.add_(1e-3)
    result = verify_onnx(model, path, (x,))
    assert not result.ok(ATOL) and result.max_abs_diff == pytest.approx(1e-3, rel=1e-2)


@pytest.mark.skipif("vit_micro" not in MICRO_MODELS, reason="ViT is not registered")
def test_cli_exports_a_model_folder_with_dynamic_batch(tmp_path, capsys):
    torch.manual_seed(0)
    vitlab.create_model("vit_micro", num_classes=3).save_pretrained(tmp_path / "folder")
    out = tmp_path / "vit.onnx"
    rc = cli(["export", "--model", str(tmp_path / "folder"), "--dynamic-batch", "--no-optimize", "--output", str(out),
              "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"] and report["batch_sizes"] == [2, 3] and report["max_abs_diff"] <= ATOL
    import onnxruntime as ort
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert isinstance(session.get_inputs()[0].shape[0], str)  # symbolic batch
    assert session.run(None, {"input": torch.randn(5, 3, 64, 64).numpy()})[0].shape == (5, 3)


def _cli_failure(argv, capsys) -> str:
    """Run ``vitlab`` expecting a user error; the message, whether main printed it or let ExportError through."""
    try:
        rc = cli(argv)
    except ExportError as e:
        return str(e)
    assert rc != 0
    return capsys.readouterr().err


def _listing(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.skipif("pale_micro" not in MICRO_MODELS, reason="Pale is not registered")
def test_cli_exports_pale_at_opset_17(tmp_path, capsys):
    """The 2x2 last stage (smaller than the pale size 4) needs ceil(2 / 4) = 1 group in the opset-17 file too."""
    out = tmp_path / "pale.onnx"
    rc = cli(["export", "--model", "pale_micro", "--opset", "17", "--no-optimize", "-o", str(out), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert rc == 0 and report["ok"] and report["max_abs_diff"] <= ATOL and onnx_opset(out) == 17
    assert _listing(tmp_path) == ["pale.onnx", "pale.onnx.preprocess.json"]  # no temporary file left over
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask  # a normal file, not a private temporary one


@pytest.mark.skipif("pale_micro" not in MICRO_MODELS, reason="Pale is not registered")
def test_unrunnable_opset_17_file_is_named_and_not_written(tmp_path, monkeypatch):
    """Without the floor-division translation the opset-17 Pale file cannot run in onnxruntime: the error names
    the failing Reshape node and its module, no file appears, and an existing file at the path is kept."""
    import vitlab.export.onnx as onnx_export
    monkeypatch.setattr(onnx_export, "_floor_division_as_in_pytorch", lambda opset: contextlib.nullcontext())
    torch.manual_seed(0)
    model = load_model("pale_micro")
    inputs = example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "pale.onnx"
    out.write_bytes(b"previous export")
    with pytest.raises(ExportError, match=r"opset 17 cannot express the Reshape node '/stages\.3/blocks\.0/attn/"
                                          r"Reshape_\d+' \(in stages\.3\.blocks\.0\.attn: PaleAttention\).*"
                                          r"cannot be reshaped.*export with --opset 18") as caught:
        export_and_verify(model, inputs, out, opset=17, optimize=False)
    assert "\n" not in str(caught.value) and isinstance(caught.value, VitlabError)
    assert out.read_bytes() == b"previous export" and _listing(tmp_path) == ["pale.onnx"]


@pytest.mark.skipif("volo_micro" not in MICRO_MODELS, reason="VOLO is not registered")
def test_opset_17_refusal_names_the_operator(tmp_path):
    """Where the opset-17 exporter refuses an operator, the one-line error names it and the opset to use."""
    torch.manual_seed(0)
    model = load_model("volo_micro")
    inputs = example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "volo.onnx"
    try:
        result = export_and_verify(model, inputs, out, opset=17, optimize=False)
    except ExportError as e:  # Tensor.unfold on sizes the TorchScript-based exporter cannot read
        assert re.search(r"opset 17 cannot express volo_micro: operator aten::\w+ .*--opset 18", str(e)), str(e)
        assert "\n" not in str(e) and "Caused by" not in str(e) and _listing(tmp_path) == []
    else:
        assert result.ok(ATOL) and onnx_opset(out) == 17


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_failed_verification_leaves_the_target_untouched(tmp_path, monkeypatch, fmt):
    import vitlab.export.verify as verify
    far_off = lambda *a, **k: Verification(fmt, "p", {"output_0": 0.5, "output_1": 0.0}, [2])  # noqa: E731
    monkeypatch.setattr(verify, "verify_onnx" if fmt == "onnx" else "verify_torchscript", far_off)
    out = tmp_path / ("tiny.onnx" if fmt == "onnx" else "tiny.pt")
    out.write_bytes(b"previous export")
    with pytest.raises(ExportError, match=r"differs from PyTorch by 0\.5 \(output 'output_0'.*--atol 0\.0001\); "
                                          rf"{re.escape(str(out))} was left as it was"):
        export_and_verify(_Tiny(), (torch.randn(2, 3, 8, 8),), out, fmt)
    assert out.read_bytes() == b"previous export" and _listing(tmp_path) == [out.name]


def test_zero_tolerance_is_measured_not_assumed(tmp_path):
    """atol 0: either the file reproduces PyTorch bit for bit, or the export fails and writes nothing."""
    torch.manual_seed(0)
    out = tmp_path / "tiny.onnx"
    try:
        result = export_and_verify(_Tiny(), (torch.randn(2, 3, 8, 8),), out, atol=0.0)
    except ExportError as e:
        assert "differs from PyTorch by" in str(e) and _listing(tmp_path) == []
    else:
        assert result.max_abs_diff == 0.0 and result.path == str(out) and _listing(tmp_path) == ["tiny.onnx"]


@pytest.mark.skipif("vit_micro" not in MICRO_MODELS, reason="ViT is not registered")
def test_cli_keep_on_failure_keeps_the_failed_file(tmp_path, capsys, monkeypatch):
    import vitlab.export.verify as verify
    monkeypatch.setattr(verify, "verify_onnx", lambda *a, **k: Verification("onnx", "p", {"logits": 0.5}, [2]))
    out = tmp_path / "vit.onnx"
    argv = ["export", "--model", "vit_micro", "--no-optimize", "-o", str(out)]
    message = _cli_failure(argv, capsys)
    assert "differs from PyTorch by 0.5" in message and "kept" not in message and _listing(tmp_path) == []
    message = _cli_failure(argv + ["--keep-on-failure"], capsys)
    kept = tmp_path / "vit.failed.onnx"
    assert f"the failed file is kept at {kept}" in message and f"nothing was written to {out}" in message
    assert _listing(tmp_path) == ["vit.failed.onnx"] and onnx_opset(kept) == 18


def test_cli_lets_export_errors_through(tmp_path, capsys, monkeypatch):
    import vitlab.export.verify as verify

    def refuse(*a, **k):
        raise ExportError("ONNX opset 17 cannot express volo_micro: operator aten::col2im (F.fold) failed")
    monkeypatch.setattr(verify, "export_onnx", refuse)
    message = _cli_failure(["export", "--model", "volo_micro", "--opset", "17", "--keep-on-failure",
                            "--output", str(tmp_path / "m.onnx")], capsys)
    assert "aten::col2im (F.fold)" in message and "nothing to keep" in message and _listing(tmp_path) == []


def test_cli_flags_follow_the_shared_spelling(capsys):
    import argparse

    from vitlab.cli import export as command
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    args = parser.parse_args(["--model", "m", "--img", "96", "--batch", "3", "--seed", "5"])
    assert (args.img_size, args.batch_size, args.seed, args.keep_on_failure) == (96, 3, 5, False)
    args = parser.parse_args(["--model", "m", "--img-size", "80", "--batch-size", "4", "-o", "x"])
    assert (args.img_size, args.batch_size, args.output, args.seed) == (80, 4, "x", 0)
    usage = parser.format_help()
    assert "--img-size" in usage and "--batch-size" in usage and "--img " not in usage and "--batch " not in usage
    code = "import sys, vitlab.cli.export; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def _handmade_onnx(path, node):
    import onnx
    from onnx import TensorProto, helper
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [2, 8, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
                              initializer=[helper.make_tensor("a", TensorProto.INT64, [2], [2, 2]),
                                           helper.make_tensor("b", TensorProto.INT64, [2], [3, 5])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_onnxruntime_errors_name_the_node_and_the_opset_to_use(tmp_path):
    from onnx import helper
    x = (torch.randn(2, 8, 4),)
    fold = _handmade_onnx(tmp_path / "fold.onnx", helper.make_node("Col2Im", ["input", "a", "a"], ["logits"],
                                                                   name="fold_node"))
    with pytest.raises(ExportError, match=r"^ONNX opset 17 cannot express the Col2Im node 'fold_node' of Identity "
                                          r"here: onnxruntime cannot load the file: No Op registered for Col2Im .*; "
                                          r"export with --opset 18$"):
        verify_onnx(nn.Identity(), fold, x)
    reshape = _handmade_onnx(tmp_path / "reshape.onnx", helper.make_node("Reshape", ["input", "b"], ["logits"],
                                                                         name="bad_reshape"))
    with pytest.raises(ExportError, match=r"^ONNX opset 17 cannot express the Reshape node 'bad_reshape' of "
                                          r"Identity here: onnxruntime fails on a batch of 2: The input tensor cannot "
                                          r"be reshaped to the requested shape\. Input shape:\{2,8,4\}, requested "
                                          r"shape:\{3,5\}; export with --opset 18$"):
        verify_onnx(nn.Identity(), reshape, x)


def test_onnxruntime_errors_trace_torch_export_nodes_to_the_source(tmp_path):
    """Files from the torch.export-based exporter record each node's aten operator, module and source line."""
    model = _Tiny()
    path = export_onnx(model, (torch.randn(2, 3, 8, 8),), tmp_path / "tiny.onnx", opset=18)
    message = ("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. "
               "Name:'node_view' Status Message: /src/reshape_helper.h:91 onnxruntime::ReshapeHelper::ReshapeHelper"
               "(const onnxruntime::TensorShape&, bool) input_shape_size == requested_shape_size was false. "
               "The input tensor cannot be reshaped")
    error = onnxruntime_failure(model, path, RuntimeError(message), "fails")
    assert str(error) == (f"ONNX opset 18 cannot express the Reshape node 'node_view' (aten::view (Tensor.view/"
                          f"reshape), test_export.py:{_TINY_LINE} `{_TINY_CODE}`) of _Tiny here: onnxruntime fails: "
                          f"The input tensor cannot be reshaped; try another --opset (17-23) or --format torchscript")


def test_detectors_are_refused_with_a_clear_error(tmp_path, capsys):
    rc = cli(["export", "--model", "mask_rcnn_micro", "--no-optimize", "-o", str(tmp_path / "d.onnx")])
    err = capsys.readouterr().err
    assert rc != 0 and err.startswith("vitlab export: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d.onnx").exists()

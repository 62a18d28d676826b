"""ONNX / TorchScript export of every family's micro configuration, verified against PyTorch.

Models are discovered with ``vitlab.list_models("*_micro")`` at collection time, so a new family
is covered as soon as it registers its micro configuration.
"""
import json

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import vitlab
from vitlab.cli.main import main as cli
from vitlab.export import (ExportError, Verification, example_inputs, export_onnx, export_torchscript, load_model,
                           onnx_op_types, onnx_opset, verify_onnx, verify_torchscript)

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

MICRO_MODELS = vitlab.list_models("*_micro")
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
    assert not (tmp_path / "fold.onnx").exists()
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


def test_cli_fails_above_tolerance(tmp_path, capsys, monkeypatch):
    import vitlab.export as export
    monkeypatch.setattr(export, "export_onnx", lambda model, inputs, path, **kw: path.write_bytes(b"x"))
    monkeypatch.setattr(export, "verify_onnx", lambda *a, **k: Verification("onnx", "p", {"logits": 0.5}, [2]))
    rc = cli(["export", "--model", "volo_micro", "--output", str(tmp_path / "m.onnx")])
    captured = capsys.readouterr()
    assert rc == 1 and "FAILED" in captured.out and "differs from PyTorch by 0.5" in captured.err


def test_cli_reports_export_errors(tmp_path, capsys, monkeypatch):
    import vitlab.export as export

    def refuse(*a, **k):
        raise ExportError("ONNX opset 17 cannot express volo_micro: operator aten::col2im (F.fold) failed")
    monkeypatch.setattr(export, "export_onnx", refuse)
    rc = cli(["export", "--model", "volo_micro", "--opset", "17", "--output", str(tmp_path / "m.onnx")])
    assert rc == 1 and "aten::col2im (F.fold)" in capsys.readouterr().err

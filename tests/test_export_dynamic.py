"""ONNX export with a free height and width (``dynamic_hw`` / ``vitlab export --dynamic-size``), and the
``<file>.preprocess.json`` written next to every export.

A dynamic-size file is traced once (at a size other than the model's own) and then run in onnxruntime at
two further sizes, multiples of the model's stride, against PyTorch at those sizes. Models that freeze a
size while tracing are refused in one line saying why, and nothing is written. The fast set covers one
family that works (ViT), one refused by the exporter (Swin's per-size mask cache), one refused by PyTorch
itself (VOLO without ``dynamic_img_size``) and the preprocessing file; the other families are ``slow``
(a dynamic-size export takes 20 s to 3 min each on a CPU).
"""
import json

import pytest
import torch

import vitlab
from vitlab.cli.main import main as cli
from vitlab.export import ExportError, example_inputs, load_model, model_stride
from vitlab.export.onnx import onnx_input_shape
from vitlab.export.verify import export_and_verify, onnx_session

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

ATOL = 1e-4
MICRO = set(vitlab.list_models("*_micro"))

# family micro model -> None (exports with free height/width) or a regex of the one-line refusal
EXPECTED = {
    "vit_micro": None,
    "segvit_micro": None,
    "uniformer_micro": None,
    "volo_micro": r"volo_micro cannot take a free height/width: PyTorch itself fails at 80x96: this VOLO was built "
                  r"for 64x64 inputs .*dynamic_img_size=True",
    "swin_micro": r"swin_micro cannot take a free height/width: torch.export fails on symbolic sizes \(TypeError: "
                  r"unhashable type: non-nested SymInt, at swin.py:\d+ `if key not in self._mask_cache:`\)",
    "pale_micro": r"pale_micro cannot take a free height/width: its traced graph keeps sizes of the example input "
                  r"fixed",
    "upernet_micro": r"upernet_micro cannot take a free height/width: (PyTorch itself fails|its traced graph keeps)",
}
FAST = {"vit_micro", "swin_micro", "volo_micro"}


def _check(name, tmp_path):
    torch.manual_seed(0)
    model = load_model(name)
    inputs = example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    out = tmp_path / f"{name}.onnx"
    expected = EXPECTED[name]
    if expected is not None:
        with pytest.raises(ExportError, match=expected) as caught:
            export_and_verify(model, inputs, out, dynamic_hw=True, dynamic_batch=True, optimize=False)
        assert "\n" not in str(caught.value) and not out.exists() and list(tmp_path.iterdir()) == []
        return
    result = export_and_verify(model, inputs, out, dynamic_hw=True, dynamic_batch=True, optimize=False)
    stride = model_stride(model)
    shape = onnx_input_shape(out)
    assert all(isinstance(d, str) for d in (shape[0], shape[-2], shape[-1])), shape  # symbolic batch, H, W
    assert len(result.input_sizes) == 3 and result.ok(ATOL), result.as_dict()
    # independently of the verifier: two further sizes, multiples of the stride, against PyTorch there
    session = onnx_session(out)
    for hw in [(64, 96), (96, 64)]:
        hw = tuple(max(stride, v // stride * stride) for v in hw)
        x = torch.randn(1, *inputs[0].shape[1:-2], *hw, generator=torch.Generator().manual_seed(sum(hw)))
        with torch.no_grad():
            ref = model(x)
        ref = ref if isinstance(ref, torch.Tensor) else next(iter(ref.values() if isinstance(ref, dict) else ref))
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == tuple(ref.shape)
        diff = float(abs(torch.from_numpy(got) - ref).max())
        print(f"{name} at {hw}: max |onnx - torch| = {diff:.3g}")
        assert diff <= ATOL


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n in FAST else [pytest.mark.slow])
                                  for n in EXPECTED if n in MICRO])
def test_dynamic_size_export_works_or_is_refused(name, tmp_path):
    _check(name, tmp_path)


@pytest.mark.skipif("vit_micro" not in MICRO, reason="ViT is not registered")
def test_a_file_frozen_at_one_size_is_caught(tmp_path, monkeypatch):
    """Traced at the model's own size, ViT's 'resize the position embedding only when the grid differs'
    is frozen: the second-size check must refuse that file instead of writing it."""
    import vitlab.export.onnx as onnx_export
    monkeypatch.setattr(onnx_export, "dynamic_example", lambda model, inputs: inputs)
    torch.manual_seed(0)
    model = load_model("vit_micro")
    inputs = example_inputs(model, batch=2, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "vit.onnx"
    with pytest.raises(ExportError, match=r"vit_micro cannot take a free height/width: its traced graph keeps "
                                          r"sizes of the example input fixed and fails at 80x48"):
        export_and_verify(model, inputs, out, dynamic_hw=True, optimize=False)
    assert list(tmp_path.iterdir()) == []
    # without the traced-program check, the ONNX file itself is run at the other sizes and refused
    monkeypatch.setattr(onnx_export, "_check_program_at_another_size", lambda *a: None)
    with pytest.raises(ExportError, match=r"(onnxruntime fails on a batch of 2 at 96x80|differs from PyTorch).*"
                                          r"nothing was written"):
        export_and_verify(model, inputs, out, dynamic_hw=True, optimize=False)
    assert list(tmp_path.iterdir()) == []


def test_torchscript_refuses_dynamic_size(capsys, tmp_path):
    rc = cli(["export", "--model", "vit_micro", "--format", "torchscript", "--dynamic-size",
              "-o", str(tmp_path / "v.pt")])
    assert rc != 0 and "--dynamic-size applies to ONNX" in capsys.readouterr().err


@pytest.mark.skipif("vit_micro" not in MICRO, reason="ViT is not registered")
def test_preprocess_json_is_written_next_to_the_file(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    labels = ["cat", "dog", "fox"]
    vitlab.create_model("vit_micro", num_classes=3).save_pretrained(tmp_path / "folder", label_names=labels)
    out = tmp_path / "vit.pt"
    rc = cli(["export", "--model", str(tmp_path / "folder"), "--format", "torchscript", "-o", str(out)])
    printed = capsys.readouterr().out
    side = tmp_path / "vit.pt.preprocess.json"
    assert rc == 0 and f"preprocessing -> {side}" in printed
    config = json.loads(side.read_text())
    model = load_model(tmp_path / "folder")
    cfg = model.pretrained_cfg
    assert config["model"] == "vit_micro" and config["vitlab_version"] == vitlab.__version__
    assert config["class_names"] == labels and config["num_classes"] == 3
    assert config["mean"] == list(cfg["mean"]) and config["std"] == list(cfg["std"])
    assert config["input_size"] == [64, 64] and config["crop_pct"] == cfg["crop_pct"]
    assert config["interpolation"] == cfg["interpolation"] and config["channel_order"] == "RGB"
    assert config["value_range"] == [0.0, 1.0] and config["format"] == "torchscript"
    assert config["resize"]["shorter_side"] == int(64 / cfg["crop_pct"]) and not config["dynamic_hw"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "vit.pt", "vit.pt.preprocess.json"]  # no temp
    # a failed export leaves neither file behind
    import vitlab.export.verify as verify
    monkeypatch.setattr(verify, "verify_onnx", lambda *a, **k: verify.Verification("onnx", "p", {"logits": 0.5}, [2]))
    try:
        rc = cli(["export", "--model", "vit_micro", "--no-optimize", "-o", str(tmp_path / "s.onnx")])
    except ExportError:
        rc = 1
    assert rc != 0 and not (tmp_path / "s.onnx").exists() and not (tmp_path / "s.onnx.preprocess.json").exists()

"""Checkpoint loading: containers, prefixes, file formats, refusal to run pickled code, clear mismatch errors."""
import argparse
import json

import pytest
import torch
from safetensors.torch import save_file

import vitlab
from conftest import manifest_path
from vitlab.checkpoints.atomic import atomic_torch_save
from vitlab.checkpoints.load import CheckpointError, read_state_dict


@pytest.fixture(scope="module")
def source():
    torch.manual_seed(0)
    model = vitlab.create_model("volo_micro", num_classes=10).eval()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def _fresh():
    torch.manual_seed(1)
    return vitlab.create_model("volo_micro", num_classes=10).eval()


def _same_output(a, b):
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize("wrap,name", [
    (lambda sd: sd, "plain.pth"),
    (lambda sd: {"state_dict": sd, "epoch": 3}, "ckpt.pth.tar"),
    (lambda sd: {"model": sd, "args": {"lr": 0.1}}, "uniformer_style.pth"),
    (lambda sd: {"model_state": sd}, "slowfast.pyth"),
    (lambda sd: {f"module.{k}": v for k, v in sd.items()}, "ddp.bin"),
    (lambda sd: {"teacher": sd, "student": {f"module.{k}": v for k, v in sd.items()}}, "esvit.pth"),
])
def test_official_containers_load_strictly(tmp_path, source, wrap, name):
    model, sd = source
    path = tmp_path / name
    torch.save(wrap(sd), path)
    target = _fresh()
    report = vitlab.load_checkpoint(target, path)
    assert report.ok
    _same_output(model, target)


def test_state_dict_ema_is_used_on_request(tmp_path, source):
    model, sd = source
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in sd.items()}
    torch.save({"state_dict": sd, "state_dict_ema": ema}, tmp_path / "c.pth.tar")
    target = _fresh()
    assert vitlab.load_checkpoint(target, tmp_path / "c.pth.tar").wrapper == "state_dict"
    report = vitlab.load_checkpoint(target, tmp_path / "c.pth.tar", use_ema=True)
    assert report.wrapper == "state_dict_ema"
    torch.testing.assert_close(target.head.bias, sd["head.bias"] + 1)


def test_safetensors_file_and_model_folder(tmp_path, source):
    model, sd = source
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    target = _fresh()
    vitlab.load_checkpoint(target, tmp_path / "w.safetensors")
    _same_output(model, target)
    model.save_pretrained(tmp_path / "folder")
    rebuilt = vitlab.from_pretrained(tmp_path / "folder")
    _same_output(model, rebuilt.eval())
    vitlab.load_checkpoint(_fresh(), tmp_path / "folder")


def test_pickled_code_is_never_executed(tmp_path, source):
    _, sd = source
    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    torch.save({"state_dict": sd, "payload": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="weights_only=True"):
        vitlab.load_checkpoint(_fresh(), tmp_path / "evil.pth")
    assert not marker.exists()
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=1)}, tmp_path / "ns.pth")
    with pytest.raises(CheckpointError, match="never executes pickled code"):
        read_state_dict(tmp_path / "ns.pth")


def test_corrupt_and_missing_files(tmp_path, source):
    _, sd = source
    torch.save(sd, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        vitlab.load_checkpoint(_fresh(), tmp_path / "truncated.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        vitlab.load_checkpoint(_fresh(), tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError, match="does not exist"):
        vitlab.load_checkpoint(_fresh(), tmp_path / "nope.pth")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="folder without weights"):
        vitlab.load_checkpoint(_fresh(), tmp_path / "empty")


def test_wrong_class_count_names_the_fix(source):
    _, sd = source
    target = vitlab.create_model("volo_micro", num_classes=5)
    with pytest.raises(CheckpointError, match=r"(?s)10 classes.*num_classes=10.*drop_classifier") as e:
        vitlab.load_checkpoint(target, sd)
    assert "head.weight: checkpoint (10, 64) vs model (5, 64)" in str(e.value)
    report = vitlab.load_checkpoint(target, sd, drop_classifier=True)
    assert any("classifier not loaded" in n for n in report.notes)
    torch.testing.assert_close(target.network[0][0].attn.v.weight, sd["network.0.0.attn.v.weight"])


def test_missing_and_unexpected_keys(source):
    _, sd = source
    partial = {k: v for k, v in sd.items() if not k.startswith("post_network.1.")}
    partial["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(12\).*unexpected keys \(1\): extra.weight"):
        vitlab.load_checkpoint(_fresh(), partial)
    report = vitlab.load_checkpoint(_fresh(), partial, strict=False)
    assert len(report.missing) == 12 and report.unexpected == ["extra.weight"]


def test_mismatch_suggests_the_variant_the_shapes_fit():
    manifest = manifest_path("volo_d1_224")
    if not manifest.is_file():
        pytest.skip("manifest not available")
    shapes = json.loads(manifest.read_text())["state_dict"]
    with torch.device("meta"):
        ckpt = {k: torch.empty(s) for k, s in shapes.items()}
        target = vitlab.create_model("volo_d2")
    with pytest.raises(CheckpointError, match="match variant 'volo_d1'"):
        vitlab.load_checkpoint(target, ckpt)


def test_224_weights_run_at_384_with_resized_position_embedding(source):
    model, sd = source
    big = vitlab.create_model("volo_micro", num_classes=10, img_size=96).eval()
    report = vitlab.load_checkpoint(big, sd)
    assert any("resized pos_embed (1, 4, 4, 64) -> (1, 6, 6, 64) (bicubic)" in n for n in report.notes)
    expected = torch.nn.functional.interpolate(sd["pos_embed"].permute(0, 3, 1, 2), size=(6, 6), mode="bicubic",
                                               align_corners=False).permute(0, 2, 3, 1)
    torch.testing.assert_close(big.pos_embed.detach(), expected)
    assert torch.isfinite(big(torch.randn(1, 3, 96, 96))).all()


def test_mmseg_backbone_prefix_keeps_backbone_weights(source):
    model, sd = source
    ckpt = {"state_dict": {**{f"backbone.{k}": v for k, v in sd.items()}, "decode_head.conv_seg.weight": torch.zeros(1)}}
    target = _fresh()
    report = vitlab.load_checkpoint(target, ckpt)
    assert any("ignored decode_head.*" in n for n in report.notes)
    _same_output(model, target)


def test_atomic_save_never_leaves_a_torn_file(tmp_path, source):
    _, sd = source
    path = tmp_path / "ckpt.pth"
    atomic_torch_save({"state_dict": sd}, path)
    before = path.read_bytes()

    class Exploding:
        def __reduce__(self):
            raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError, match="crash while writing"):
        atomic_torch_save({"state_dict": sd, "bad": Exploding()}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pth"]

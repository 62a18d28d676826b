"""Swin backbone: official key layouts (EsViT manifests, timm remap), shapes, windows, errors."""
import json

import pytest
import torch

import vitlab
from conftest import manifest_path
from vitlab.attention.window import relative_position_index, shifted_window_mask, window_partition, window_reverse
from vitlab.ssl.esvit import build_esvit_network

MANIFESTS = [(f"esvit_swin_{size}_w{w}_teacher", f"swin_{size}" + ("_w14" if w == 14 else ""))
             for size in ("tiny", "small", "base") for w in (7, 14)]


@pytest.mark.parametrize("manifest,variant", MANIFESTS, ids=[m for m, _ in MANIFESTS])
def test_esvit_teacher_manifest_keys_shapes_params(manifest, variant, require_fixtures):
    spec = json.loads(manifest_path(manifest).read_text())
    with torch.device("meta"):
        model = build_esvit_network(vitlab.create_model(variant), out_dim=spec["kwargs"]["head"]["out_dim"])
    sd = model.state_dict()
    assert list(sd) == list(spec["state_dict"]), "key order differs from the official checkpoint"
    wrong = {k: (tuple(v.shape), tuple(spec["state_dict"][k])) for k, v in sd.items()
             if list(v.shape) != spec["state_dict"][k]}
    assert not wrong, wrong
    assert sum(p.numel() for p in model.parameters()) == spec["params"]


def test_family_accepts_official_kwargs_and_string_norm():
    spec = dict(img_size=64, patch_size=4, embed_dim=12, depths=[1, 1, 2], num_heads=[1, 2, 4], window_size=4,
                norm_layer="LayerNorm(eps=1e-6)", use_dense_prediction=True, num_classes=5)
    model = vitlab.create_model("swin", **spec)
    assert model.norm.eps == 1e-6
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_micro_forward_backward_and_features():
    model = vitlab.create_model("swin_micro", num_classes=7)
    assert 0.3e6 < sum(p.numel() for p in model.parameters()) < 0.8e6
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    model(x).sum().backward()
    assert x.grad is not None and model.patch_embed.proj.weight.grad is not None
    feats = model.forward_intermediates(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 8, 8), (64, 4, 4), (128, 2, 2)]
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16]
    assert model.forward_features(x).shape == (2, 4, 128)
    assert model.forward_last_blocks(x, 4).shape == (2, 64 + 64 + 128 + 128)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)


def test_windows_fixed_at_construction_and_small_crops():
    model = vitlab.create_model("swin_micro").eval()
    # at 32 px the stages are 8x8 (window 4, shift 2), 4x4 (window 4, no shift), 2x2 (window shrinks to 2)
    assert [(b.window_size, b.shift_size) for b in model.layers[0].blocks] == [(4, 0), (4, 2)]
    assert [(b.window_size, b.shift_size) for b in model.layers[1].blocks] == [(4, 0), (4, 0)]
    assert [(b.window_size, b.shift_size) for b in model.layers[2].blocks] == [(2, 0), (2, 0)]
    out = model.forward_features(torch.randn(2, 3, 16, 16))  # a local crop: padded, not masked
    assert out.shape == (2, 1, 128) and torch.isfinite(out).all()


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    model = vitlab.create_model("swin_micro", num_classes=3).train()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    model.set_grad_checkpointing(True)
    torch.testing.assert_close(model(x), ref)


def test_window_helpers_roundtrip_and_mask():
    x = torch.randn(2, 8, 8, 5)
    torch.testing.assert_close(window_reverse(window_partition(x, 4), 4, 8, 8), x)
    idx = relative_position_index(3)
    assert idx.shape == (9, 9) and idx.dtype == torch.int64 and idx.max() == 24 and idx[4, 4] == 12
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert (mask[0] == 0).all()  # the top-left window has one region
    assert set(mask[3].unique().tolist()) == {0.0, -100.0}


def test_timm_layout_loads_and_reproduces():
    model = vitlab.create_model("swin_micro", num_classes=4).eval()
    timm_sd = {}
    for k, v in model.state_dict().items():
        if ".downsample." in k:
            i = int(k.split(".")[1])
            k = k.replace(f"layers.{i}.downsample", f"layers.{i + 1}.downsample")
        if k.endswith("relative_position_index"):
            continue  # timm keeps it out of the state dict
        timm_sd[k.replace("head.", "head.fc.") if k.startswith("head.") else k] = v
    other = vitlab.create_model("swin_micro", num_classes=4).eval()
    report = vitlab.load_checkpoint(other, timm_sd, strict=True)
    assert any("timm" in n for n in report.notes)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(other(x), model(x))


def test_esvit_checkpoint_into_plain_backbone():
    net = build_esvit_network(vitlab.create_model("swin_micro"), out_dim=16, hidden_dim=8, bottleneck_dim=4)
    ckpt = {"student": {f"module.{k}": v for k, v in net.state_dict().items()}, "teacher": net.state_dict()}
    plain = vitlab.create_model("swin_micro", num_classes=0)
    report = vitlab.load_checkpoint(plain, ckpt, strict=True, prefer="teacher")
    assert report.wrapper == "teacher" and any("projection-head" in n for n in report.notes)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(plain.forward_features(x), net.forward_features(x))
    report = vitlab.load_checkpoint(plain, ckpt, strict=True, prefer="student")
    assert any("module." in n for n in report.notes)


def test_bad_inputs_are_explained():
    model = vitlab.create_model("swin_micro")
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="depths"):
        vitlab.create_model("swin", depths=[2, 2], num_heads=[2])

"""SegViT segmentors: official decode-head shapes, mmseg checkpoints, training step, Shrunk's compute saving."""
import json

import pytest
import torch

import vitlab
from conftest import manifest_path
from vitlab.bench.flops import count_macs
from vitlab.models.vit import convert_mmseg_vit

VARIANT_MANIFEST = {"segvit_vit_base": "segvit_atm_vit_b_ade20k", "segvit_vit_large": "segvit_atm_vit_l_ade20k",
                    "segvit_vit_large_shrunk": "segvit_tpn_vit_l_shrunk_ade20k"}


@pytest.mark.parametrize("variant", sorted(VARIANT_MANIFEST))
def test_variant_decode_head_matches_manifest(variant, require_fixtures):
    manifest = json.loads(manifest_path(VARIANT_MANIFEST[variant]).read_text())
    with torch.device("meta"):
        model = vitlab.create_model(variant)
    head = {k: list(v.shape) for k, v in model.decode_head.state_dict().items()}
    assert head == manifest["state_dict"]
    assert sum(p.numel() for p in model.decode_head.parameters()) == manifest["params"]


def _mmseg_checkpoint(model) -> dict:
    """The model's weights as a released mmseg checkpoint: mmseg ViT keys, prefixes, loss buffer."""
    inverse = {}
    for k, v in model.backbone.state_dict().items():
        k = (k.replace("patch_embed.proj.", "patch_embed.projection.").replace("blocks.", "layers.")
             .replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.").replace(".attn.qkv.weight", ".attn.attn.in_proj_weight")
             .replace(".attn.qkv.bias", ".attn.attn.in_proj_bias").replace(".attn.proj.", ".attn.attn.out_proj.")
             .replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1."))
        inverse[f"backbone.{k}"] = v.clone()
    assert convert_mmseg_vit({k[9:]: v for k, v in inverse.items()}).keys() == model.backbone.state_dict().keys()
    state = {**inverse, **{f"decode_head.{k}": v.clone() for k, v in model.decode_head.state_dict().items()}}
    state["decode_head.loss_decode.criterion.empty_weight"] = torch.tensor([1.0] * model.num_classes + [0.1])
    return {"meta": {}, "state_dict": state}


def test_mmseg_checkpoint_loads_strict(tmp_path):
    torch.manual_seed(0)
    src = vitlab.create_model("segvit_micro").eval()
    torch.save(_mmseg_checkpoint(src), tmp_path / "iter_160000.pth")
    dst = vitlab.create_model("segvit_micro").eval()
    report = vitlab.load_checkpoint(dst, tmp_path / "iter_160000.pth", strict=True)
    notes = " ".join(report.notes)
    assert "empty_weight" in notes and "mmseg" in notes
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(dst(x), src(x))


def test_micro_segmentor_train_and_eval():
    torch.manual_seed(0)
    model = vitlab.create_model("segvit_micro", num_classes=3)
    img, label = torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64))
    label[0, :8] = 255
    losses = model.loss(img, label)
    assert set(losses) >= {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_ce_1", "loss"}
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "cls_token" not in n)
    model.eval()
    probs = model(torch.randn(1, 3, 50, 70))  # padded to a multiple of 16 inside, cropped back
    assert probs.shape == (1, 3, 50, 70) and probs.min() >= 0 and probs.max() <= 1
    with pytest.raises(ValueError, match="label size"):
        model.loss(img, label[:, :32])


def test_reset_classifier_and_api():
    model = vitlab.create_model("segvit_micro")
    model.reset_classifier(5)
    assert model.decode_head.class_embed.out_features == 6 and model.criterion.num_classes == 5
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    shrunk = vitlab.create_model("segvit_vit_large_shrunk", img_size=64, num_classes=4,
                                 backbone=dict(embed_dims=32, num_layers=4, num_heads=2, shrink_idx=2, out_indices=[1, 3]),
                                 decode_head=dict(in_channels=32, channels=32, embed_dims=16, num_heads=2, num_layers=2,
                                                  shrink_ratio=8))
    shrunk.reset_classifier(2)
    assert shrunk.eval()(torch.randn(1, 3, 64, 96)).shape == (1, 2, 64, 96)


def test_shrunk_saves_about_40_percent_compute():
    with torch.device("meta"):
        large, shrunk = vitlab.create_model("segvit_vit_large"), vitlab.create_model("segvit_vit_large_shrunk")
        x = torch.empty(1, 3, 640, 640)
        macs_large, _ = count_macs(large, x)
        macs_shrunk, _ = count_macs(shrunk, x)
    assert macs_large / 1e9 == pytest.approx(637.9, rel=0.01)  # paper's GFLOPs are multiply-adds
    assert macs_shrunk / 1e9 == pytest.approx(373.5, rel=0.01)
    assert 0.38 < 1 - macs_shrunk / macs_large < 0.45

"""UniFormer (image): official manifests, token labeling, layer scale without global state, dense backbone."""
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitlab
from conftest import manifest_path
from vitlab.attention.relation import WindowMHRA, window_merge, window_partition
from vitlab.models.base import TrainOutput

IMAGE_MANIFESTS = {
    "uniformer_small": "uniformer_small",
    "uniformer_small_plus": "uniformer_small_plus",
    "uniformer_base": "uniformer_base",
    "uniformer_base_ls": "uniformer_base_ls",
    "uniformer_small_tl": "uniformer_small_token_labeling",
    "uniformer_small_plus_tl": "uniformer_small_plus_token_labeling",
    "uniformer_base_tl": "uniformer_base_token_labeling",
    "uniformer_large_ls_tl": "uniformer_large_ls",
}


def _meta(name, **kwargs):
    with torch.device("meta"):
        return vitlab.create_model(name, **kwargs)


def _params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("manifest,variant", sorted(IMAGE_MANIFESTS.items()))
def test_variant_matches_official_manifest(require_fixtures, manifest, variant):
    spec = json.loads(manifest_path(manifest).read_text())
    model = _meta(variant)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(spec["state_dict"]), "keys or their order differ from the official model"
    wrong = {k: (shapes[k], v) for k, v in spec["state_dict"].items() if shapes[k] != list(v)}
    assert not wrong
    assert abs(_params(model) - spec["params"]) <= 1e-3 * spec["params"]


def test_family_builds_official_kwargs_and_alias():
    a = _meta("uniformer", depth=[3, 4, 8, 3], embed_dim=[64, 128, 320, 512], head_dim=64, mlp_ratio=4,
              qkv_bias=True, img_size=224, num_classes=1000)
    b = _meta("uniformer_image", depth=[3, 4, 8, 3])
    assert _params(a) == _params(b) == 21545256


def test_layer_scale_is_an_argument_not_global_state():
    with_ls = _meta("uniformer_base_ls")
    after = _meta("uniformer_base")  # the official module global would give this one gammas too
    assert any(k.endswith("gamma_1") for k in with_ls.state_dict())
    assert not any("gamma" in k for k in after.state_dict())
    plain = _meta("uniformer", depth=[1, 1, 1, 1], embed_dim=[16, 32, 64, 64], head_dim=32, layer_scale=True,
                  init_value=0.1)
    tl = _meta("uniformer", depth=[1, 1, 1, 1], embed_dim=[16, 32, 64, 64], head_dim=32, layer_scale=True,
               token_labeling=True)
    assert "blocks1.0.gamma_1" not in plain.state_dict() and plain.blocks3[0].gamma_1.shape == (64,)
    assert tl.blocks1[0].gamma_1.shape == (1, 16, 1, 1)
    real = vitlab.create_model("uniformer", depth=[1, 1, 1, 1], embed_dim=[16, 32, 64, 64], head_dim=32,
                               layer_scale=True, init_value=0.1)
    assert torch.allclose(real.blocks4[0].gamma_2, torch.full((64,), 0.1))


def test_micro_forward_backward_and_any_input_size():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_micro", num_classes=5)
    assert _params(model) < 1_000_000
    x = torch.randn(2, 3, 64, 96)
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(torch.randn(1, 3, 96, 128)).shape == (1, 5)
    feats = model.forward_intermediates(torch.randn(1, 3, 64, 96))
    for f, info in zip(feats, model.feature_info):
        assert f.shape[1] == info["channels"]
        assert f.shape[-2:] == (64 // info["reduction"], 96 // info["reduction"])
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)


def test_bad_input_messages():
    model = vitlab.create_model("uniformer_micro").eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match="divisible by head_dim"):
        vitlab.create_model("uniformer", embed_dim=[64, 128, 320, 500], head_dim=64)


def test_token_labeling_eval_and_train_outputs():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_micro", token_labeling=True, return_dense=True, num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        tokens = feats.flatten(2).transpose(1, 2)
        expected = model.head(tokens.mean(1)) + 0.5 * model.aux_head(tokens).max(1).values
        torch.testing.assert_close(model(x), expected)
        out = model.forward_train(x)
        assert isinstance(out, TrainOutput) and out.mix_box is None
        assert out.logits.shape == (2, 7) and out.aux_logits.shape == (2, 4, 7)  # 2x2 tokens at stride 32
        torch.testing.assert_close(out.logits, model.head(tokens.mean(1)))  # the pooled head alone
        torch.testing.assert_close(model(x), out.logits + 0.5 * out.aux_logits.max(1).values)
    model.train()
    logits = model(x)
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 7)
    out = model.forward_train(x)
    assert out.logits.shape == (2, 7) and out.aux_logits.shape == (2, 4, 7) and out.mix_box is None


def test_forward_has_no_mix_token_in_training_mode():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_micro", token_labeling=True, return_dense=True, mix_token=True,
                                num_classes=4).train()
    x = torch.randn(2, 3, 128, 128)
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        second = model(x)
    assert first.shape == (2, 4)
    torch.testing.assert_close(first, second)  # no random box drawn: the same function under any seed


def test_mix_token_swaps_aligned_boxes_back():
    torch.manual_seed(3)
    model = vitlab.create_model("uniformer_micro", token_labeling=True, return_dense=True, mix_token=True,
                                num_classes=4).train()
    x = torch.randn(2, 3, 128, 128)
    out = model.forward_train(x)
    assert out.mix_box is not None
    y1, x1, y2, x2 = out.mix_box
    assert out.logits.shape == (2, 4) and out.aux_logits.shape == (2, 16, 4)
    assert 0 <= y1 <= y2 <= 4 and 0 <= x1 <= x2 <= 4
    # identical images: mixing is a no-op, so outputs equal the unmixed training forward
    same = x[:1].repeat(2, 1, 1, 1)
    torch.manual_seed(5)
    mixed = model.forward_train(same)
    model.mix_token = False
    plain = model.forward_train(same)
    assert mixed.mix_box is not None and plain.mix_box is None
    torch.testing.assert_close(mixed.logits, plain.logits)
    torch.testing.assert_close(mixed.aux_logits, plain.aux_logits)


def test_mix_token_un_mixes_aux_logits_per_image(monkeypatch):
    """A box over the whole grid shows the network the flipped batch (same BatchNorm batch statistics);
    un-mixing must give each image its own tokens' aux logits back."""
    import vitlab.models.uniformer as uniformer
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_micro", token_labeling=True, return_dense=True, mix_token=True,
                                num_classes=4).train()
    x = torch.randn(3, 3, 128, 128)
    monkeypatch.setattr(uniformer, "mix_token_box", lambda grid_hw, lam: (0, 0, *grid_hw))
    mixed = model.forward_train(x)
    assert mixed.mix_box == (0, 0, 4, 4)
    model.mix_token = False
    plain = model.forward_train(x)
    torch.testing.assert_close(mixed.aux_logits, plain.aux_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.logits, plain.logits.flip(0), atol=1e-5, rtol=1e-5)


def test_plain_classifier_forward_train_is_forward():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_micro", num_classes=5).train()
    x = torch.randn(2, 3, 64, 64)
    out = model.forward_train(x)
    assert isinstance(out, TrainOutput) and out.aux_logits is None and out.mix_box is None
    torch.testing.assert_close(out.logits, model(x))
    dense = vitlab.create_model("uniformer_dense", depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 96], head_dim=16)
    with pytest.raises(ValueError, match="dense UniFormer backbone has no classification"):
        dense.forward_train(x)


def _reference_window_attention(attn: WindowMHRA, x: torch.Tensor) -> torch.Tensor:
    """Explicit per-window loop with zero padding (the official SABlock_Windows computation)."""
    B, H, W, C = x.shape
    ws = attn.window_size
    xp = F.pad(x, (0, 0, 0, (-W) % ws, 0, (-H) % ws))
    out = torch.zeros_like(xp)
    heads = attn.num_heads
    for i in range(0, xp.shape[1], ws):
        for j in range(0, xp.shape[2], ws):
            win = xp[:, i:i + ws, j:j + ws].reshape(B, -1, C)
            q, k, v = attn.qkv(win).reshape(B, -1, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
            a = ((q @ k.transpose(-2, -1)) * attn.scale).softmax(-1)
            o = attn.proj((a @ v).transpose(1, 2).reshape(B, -1, C))
            out[:, i:i + ws, j:j + ws] = o.reshape(B, ws, ws, C)
    return out[:, :H, :W]


def test_window_attention_matches_explicit_loop_with_padding():
    torch.manual_seed(0)
    attn = WindowMHRA(16, num_heads=2, window_size=3, qkv_bias=True).eval()
    x = torch.randn(2, 5, 7, 16)
    with torch.no_grad():
        torch.testing.assert_close(attn(x), _reference_window_attention(attn, x), atol=1e-5, rtol=0)
    windows, padded = window_partition(x, 3)
    assert windows.shape == (2 * 2 * 3, 9, 16) and padded == (6, 9)
    torch.testing.assert_close(window_merge(windows, 3, 2, padded, (5, 7)), x)


def test_dense_backbone_windows_hybrid_and_stage_norms():
    torch.manual_seed(0)
    kw = dict(depth=[1, 1, 8, 1], embed_dim=[16, 32, 64, 96], head_dim=16)
    hybrid = vitlab.create_model("uniformer", dense=True, hybrid=True, window_size=14, **kw)
    assert [b.window_size for b in hybrid.blocks3] == [14, 14, 14, None, 14, 14, 14, None]
    assert not hasattr(hybrid, "head") and not hasattr(hybrid, "norm")
    windows = vitlab.create_model("uniformer", dense=True, windows=True, window_size=4, **kw).eval()
    glob = vitlab.create_model("uniformer", dense=True, **kw).eval()
    glob.load_state_dict(windows.state_dict())
    x = torch.randn(1, 3, 64, 64)  # stage-3 grid 4x4 = one window: windowed == global
    with torch.no_grad():
        a, b = windows(x), glob(x)
    assert len(a) == 4 and [t.shape[1] for t in a] == [16, 32, 64, 96]
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=0)
    with torch.no_grad():  # a bigger input: the 8x8 stage-3 grid is split into 4 windows, so outputs differ
        y = torch.randn(1, 3, 128, 128)
        a, b = windows(y), glob(y)
    torch.testing.assert_close(a[1], b[1], atol=1e-5, rtol=0)
    assert (a[2] - b[2]).abs().max() > 1e-3
    feats = glob.forward_intermediates(x)
    stage3_raw = glob._stages(x, {2})[1][0]
    torch.testing.assert_close(feats[2], F.layer_norm(stage3_raw.permute(0, 2, 3, 1), (64,), glob.norm3.weight,
                                                      glob.norm3.bias, 1e-6).permute(0, 3, 1, 2))


def test_classification_checkpoint_into_dense_backbone_reports_keys():
    kw = dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 96], head_dim=16)
    cls_model = vitlab.create_model("uniformer", num_classes=10, **kw)
    dense = vitlab.create_model("uniformer_dense", layers=kw["depth"], embed_dim=kw["embed_dim"], head_dim=16,
                                hybrid=True)
    report = vitlab.load_checkpoint(dense, {"model": cls_model.state_dict()}, strict=True)
    text = "\n".join(report.notes)
    assert "dropped 7 keys (head.bias, head.weight, norm.bias, norm.num_batches_tracked, norm.running_mean, " \
           "norm.running_var, norm.weight)" in text
    assert "added 8 freshly initialised keys (norm1.weight, norm1.bias, norm2.weight" in text
    torch.testing.assert_close(dense.blocks3[1].attn.qkv.weight, cls_model.blocks3[1].attn.qkv.weight)
    assert torch.equal(dense.norm1.weight, torch.ones(16))


def test_frozen_batch_norm_option():
    torch.manual_seed(0)
    kw = dict(depth=[1, 1, 1, 1], embed_dim=[16, 32, 64, 64], head_dim=32, dense=True)
    frozen = vitlab.create_model("uniformer", freeze_bn=True, **kw)
    normal = vitlab.create_model("uniformer", **kw).eval()
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in frozen.modules())
    assert not any(p.requires_grad is False for p in frozen.parameters())
    with torch.no_grad():
        normal.blocks1[0].norm1.running_mean.uniform_(-1, 1)
    frozen.load_state_dict(normal.state_dict())
    frozen.train()  # frozen statistics are used even in training mode and never updated
    x = torch.randn(2, 3, 64, 64)
    before = frozen.blocks1[0].norm1.running_mean.clone()
    for u, v in zip(frozen(x), normal(x)):
        torch.testing.assert_close(u, v, atol=1e-5, rtol=0)
    assert torch.equal(before, frozen.blocks1[0].norm1.running_mean)


def test_grad_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_micro").train()
    x = torch.randn(2, 3, 64, 64)
    model(x).square().mean().backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).square().mean().backward()
    for a, p in zip(ref, model.parameters()):
        torch.testing.assert_close(p.grad, a, atol=1e-6, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variant,paper_gmacs", [("uniformer_small", 3.6), ("uniformer_small_plus", 4.2),
                                                 ("uniformer_base", 8.3)])
def test_gmacs_match_paper(variant, paper_gmacs):
    from vitlab.bench.flops import count_macs
    model = vitlab.create_model(variant).eval()
    macs, _ = count_macs(model, torch.randn(1, 3, 224, 224))
    assert abs(macs / 1e9 - paper_gmacs) / paper_gmacs < 0.02

"""VOLO: official layouts and sizes, API behaviour, outlook-attention semantics, input errors."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import vitlab
from conftest import manifest_path
from vitlab.attention.outlook import OutlookAttention, outlook_attention
from vitlab.models.base import TrainOutput
from vitlab.models.volo import VOLO

PAPER_PARAMS = {"d1": 26.63e6, "d2": 58.68e6, "d3": 86.33e6, "d4": 192.96e6, "d5": 295.46e6}


@pytest.mark.parametrize("variant", ["d1", "d2", "d3", "d4", "d5"])
def test_full_size_variants_match_official_manifest(variant):
    with torch.device("meta"):
        model = vitlab.create_model(f"volo_{variant}")
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - PAPER_PARAMS[variant]) / PAPER_PARAMS[variant] < 1e-3
    path = manifest_path(f"volo_{variant}_224")
    if not path.is_file():
        pytest.skip(f"manifest {path} not available")
    manifest = json.loads(path.read_text())
    assert params == manifest["params"]
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(ours) == list(manifest["state_dict"]), "key order differs from the official state_dict"
    assert ours == manifest["state_dict"]


def test_high_resolution_variants_size_their_position_embedding():
    for name, grid in [("volo_d1_384", 24), ("volo_d3_448", 28), ("volo_d5_512", 32)]:
        with torch.device("meta"):
            model = vitlab.create_model(name)
        assert tuple(model.pos_embed.shape[1:3]) == (grid, grid)
        assert model.pretrained_cfg["input_size"] == (3, grid * 16, grid * 16)


@pytest.fixture
def micro():
    torch.manual_seed(0)
    return vitlab.create_model("volo_micro", num_classes=7).eval()


def test_eval_output_is_class_head_plus_half_max_aux(micro):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = micro.forward_features(x)
        expected = micro.head(feats[:, 0]) + 0.5 * micro.aux_head(feats[:, 1:]).max(1).values
        torch.testing.assert_close(micro(x), expected)
        assert feats.shape == (2, 1 + 4 * 4, 64)
        assert micro.forward_head(feats, pre_logits=True).shape == (2, micro.num_features)


def test_forward_returns_one_logits_tensor_in_train_and_eval_mode():
    torch.manual_seed(0)
    model = vitlab.create_model("volo_micro", num_classes=7, mix_token=True)
    x = torch.randn(2, 3, 64, 64)
    for mode in (True, False):
        out = model.train(mode)(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 7), f"training={mode}"
    # no MixToken inside forward: in training mode it draws no random box (BatchNorm uses batch statistics,
    # the same for both calls), so two calls under different seeds agree
    model.train()
    with torch.no_grad():
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        torch.testing.assert_close(model(x), first)


def test_eval_forward_merges_forward_train_outputs(micro):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = micro.forward_train(x)
        assert isinstance(out, TrainOutput) and out.mix_box is None
        assert out.logits.shape == (2, 7) and out.aux_logits.shape == (2, 16, 7)
        torch.testing.assert_close(micro(x), out.logits + 0.5 * out.aux_logits.max(1).values)
        feats = micro.forward_features(x)
        torch.testing.assert_close(out.logits, micro.head(feats[:, 0]))  # the class head alone, not merged


def test_forward_train_with_mix_token_returns_box_and_unmixed_aux():
    torch.manual_seed(1)
    model = vitlab.create_model("volo_micro", num_classes=3, mix_token=True).train()
    out = model.forward_train(torch.randn(4, 3, 64, 64))
    assert out.logits.shape == (4, 3) and out.aux_logits.shape == (4, 16, 3)
    assert out.mix_box is not None
    y1, x1, y2, x2 = out.mix_box
    assert 0 <= y1 <= y2 <= 4 and 0 <= x1 <= x2 <= 4
    # identical images: mixing is a no-op, so the outputs equal the unmixed ones
    same = torch.randn(1, 3, 64, 64).expand(4, -1, -1, -1).contiguous()
    torch.manual_seed(2)
    mixed = model.forward_train(same)
    assert mixed.mix_box is not None
    model.mix_token = False  # same training mode (BatchNorm batch statistics), no MixToken
    plain = model.forward_train(same)
    assert plain.mix_box is None
    torch.testing.assert_close(mixed.logits, plain.logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.aux_logits, plain.aux_logits, atol=1e-5, rtol=1e-5)


def test_mix_token_un_mixes_aux_logits_per_image():
    """Each image's aux logits inside the box come from its own tokens: with a box covering the whole
    grid the network sees the batch flipped (same BatchNorm batch statistics), and un-mixing must flip
    the aux logits back."""
    torch.manual_seed(0)
    model = vitlab.create_model("volo_micro", num_classes=3, mix_token=True).train()
    model._mix_tokens = lambda t: (t.flip(0), (0, 0, 4, 4))
    x = torch.randn(3, 3, 64, 64)
    mixed = model.forward_train(x)
    model.mix_token = False
    plain = model.forward_train(x)
    torch.testing.assert_close(mixed.aux_logits, plain.aux_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.logits, plain.logits.flip(0), atol=1e-5, rtol=1e-5)


def test_without_aux_head_forward_train_is_forward():
    torch.manual_seed(0)
    model = vitlab.create_model("volo_micro", num_classes=5, return_dense=False).train()
    x = torch.randn(2, 3, 64, 64)
    out = model.forward_train(x)
    assert isinstance(out, TrainOutput) and out.aux_logits is None and out.mix_box is None
    torch.testing.assert_close(out.logits, model(x))
    assert model(x).shape == (2, 5)


def test_forward_intermediates_match_feature_info(micro):
    feats = micro.forward_intermediates(torch.randn(1, 3, 64, 64))
    assert len(feats) == len(micro.feature_info) == 4
    for f, info in zip(feats, micro.feature_info):
        assert f.shape == (1, info["channels"], 64 // info["reduction"], 64 // info["reduction"])
    last = micro.forward_intermediates(torch.randn(1, 3, 64, 64), indices=1)
    assert len(last) == 1 and last[0].shape == feats[-1].shape
    with pytest.raises(ValueError, match="out of range"):
        micro.forward_intermediates(torch.randn(1, 3, 64, 64), indices=[7])


def test_reset_classifier_and_no_weight_decay(micro):
    micro.reset_classifier(5)
    assert micro(torch.randn(1, 3, 64, 64)).shape == (1, 5)
    micro.reset_classifier(0)
    micro.return_dense = False
    assert micro(torch.randn(1, 3, 64, 64)).shape == (1, micro.num_features)
    assert {"pos_embed", "cls_token"} <= micro.no_weight_decay()


def test_stochastic_depth_follows_official_schedule():
    with torch.device("meta"):
        model = vitlab.create_model("volo_d1", drop_path_rate=0.1)
    layers = [4, 4, 8, 2]
    assert all(isinstance(b.drop_path, torch.nn.Identity) for b in model.network[0]), "outlookers get no drop-path"
    rates = [b.drop_path.drop_prob if hasattr(b.drop_path, "drop_prob") else 0.0
             for stage in model.network[2:] for b in stage]
    expected = [0.1 * i / (sum(layers) - 1) for i in range(4, sum(layers))]
    assert rates == pytest.approx(expected)
    assert all(isinstance(b.drop_path, torch.nn.Identity) for b in model.post_network)


def test_grad_checkpointing_gives_identical_gradients():
    torch.manual_seed(0)
    model = vitlab.create_model("volo_micro", num_classes=4).train()
    x = torch.randn(2, 3, 64, 64)

    def grads():
        model.zero_grad()
        out = model.forward_train(x)
        (out.logits.sum() + out.aux_logits.sum()).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.set_grad_checkpointing(True)
    for a, b in zip(plain, grads()):
        torch.testing.assert_close(a, b)


def test_wrong_inputs_give_clear_errors(micro):
    with pytest.raises(ValueError, match=r"built for 64x64 inputs.*img_size"):
        micro(torch.randn(1, 3, 96, 96))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        micro(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        micro(torch.randn(3, 64, 64))
    with pytest.raises(ValueError, match="at least 16x16"):
        micro(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="one entry per block group"):
        VOLO(layers=[1, 1], embed_dims=[8])


def test_dynamic_img_size_interpolates_position_embedding():
    model = vitlab.create_model("volo_micro", num_classes=3, dynamic_img_size=True).eval()
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 3)


def test_odd_token_grid_runs():
    model = vitlab.create_model("volo_micro", num_classes=3, img_size=72).eval()  # 9x9 outlooker grid
    assert model(torch.randn(1, 3, 72, 72)).shape == (1, 3)


def naive_outlook(v, attn, heads, k, pad, stride):
    """Definition-level outlook attention: per window, weighted sums of its K*K values, summed back."""
    B, H, W, C = v.shape
    d = C // heads
    out = torch.zeros_like(v)
    h, w = math.ceil(H / stride), math.ceil(W / stride)
    for wi in range(h):
        for wj in range(w):
            top, left = wi * stride - pad, wj * stride - pad
            slots = [(top + a, left + b) for a in range(k) for b in range(k)]
            for head in range(heads):
                A = attn[:, head, wi * w + wj]  # B, K^2 (out slot), K^2 (in slot)
                vals = torch.stack([v[:, y, x, head * d:(head + 1) * d] if 0 <= y < H and 0 <= x < W
                                    else v.new_zeros(B, d) for y, x in slots], 1)  # B, K^2, d
                res = A @ vals
                for s, (y, x) in enumerate(slots):
                    if 0 <= y < H and 0 <= x < W:
                        out[:, y, x, head * d:(head + 1) * d] += res[:, s]
    return out


@pytest.mark.parametrize("H,W,heads,k,pad,stride", [(8, 8, 2, 3, 1, 2), (9, 7, 1, 3, 1, 2), (6, 6, 2, 3, 1, 3)])
def test_outlook_attention_matches_definition(H, W, heads, k, pad, stride):
    torch.manual_seed(0)
    B, C = 2, 4 * heads
    v = torch.randn(B, H, W, C, dtype=torch.float64)
    n = math.ceil(H / stride) * math.ceil(W / stride)
    attn = torch.randn(B, heads, n, k * k, k * k, dtype=torch.float64).softmax(-1)
    got = outlook_attention(v, attn, heads, k, pad, stride)
    torch.testing.assert_close(got, naive_outlook(v, attn, heads, k, pad, stride))


def test_outlook_module_generates_weights_from_pooled_centre_tokens():
    torch.manual_seed(0)
    m = OutlookAttention(8, num_heads=2, kernel_size=3, padding=1, stride=2).eval()
    x = torch.randn(1, 5, 5, 8)
    a = m.attention_weights(x)
    pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, 2, ceil_mode=True).permute(0, 2, 3, 1)
    logits = m.attn(pooled).reshape(1, 9, 2, 9, 9).permute(0, 2, 1, 3, 4) * m.scale
    torch.testing.assert_close(a, logits.softmax(-1))
    torch.testing.assert_close(a.sum(-1), torch.ones(1, 2, 9, 9))

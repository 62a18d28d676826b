"""Plain ViT: sizes, mmseg/timm checkpoint layouts, query-based downsampling (Shrunk), input errors."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitlab
from vitlab.models.vit import VisionTransformer, vit_from_mmseg_kwargs


def test_param_counts_match_timm():
    with torch.device("meta"):
        base = vitlab.create_model("vit_base_patch16")
        large = vitlab.create_model("vit_large_patch16")
    assert sum(p.numel() for p in base.parameters()) == 86_567_656
    assert sum(p.numel() for p in large.parameters()) == 304_326_632


class MMSegLayer(nn.Module):
    """Reference: mmseg's TransformerEncoderLayer math with its key names, on torch's own attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = nn.Module()
        self.ffn.layers = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Linear(4 * dim, dim))

    def forward(self, x, query=None):
        q = x if query is None else query
        h = self.attn.attn(self.ln1(q), self.ln1(x), self.ln1(x), need_weights=False)[0] + q
        return self.ffn.layers(self.ln2(h)) + h


class MMSegViT(nn.Module):
    """Reference mmseg VisionTransformer (with_cls_token=False) and SegViT's vit_shrink forward."""

    def __init__(self, dim=32, depth=4, heads=2, img=64, shrink_idx=None):
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.projection = nn.Conv2d(3, dim, 16, 16)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (img // 16) ** 2, dim))
        self.layers = nn.ModuleList(MMSegLayer(dim, heads) for _ in range(depth))
        self.shrink_idx = shrink_idx
        for p in self.parameters():  # non-trivial biases / norms
            nn.init.normal_(p, std=0.2) if p.ndim == 1 else None

    def forward(self, img, out_indices):
        x = self.patch_embed.projection(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        x = x[:, 1:]
        outs = []
        for i, layer in enumerate(self.layers):
            if i == self.shrink_idx:
                n, hw, c = x.shape
                h = int(math.sqrt(hw))
                down = x.transpose(1, 2).reshape(n, c, h, h)[:, :, ::2, ::2].reshape(n, c, hw // 4).transpose(1, 2)
                x = layer(x, down)
            else:
                x = layer(x)
            if i in out_indices:
                h = int(math.sqrt(x.shape[1]))
                outs.append(x.transpose(1, 2).reshape(x.shape[0], -1, h, h))
        return outs


@pytest.mark.parametrize("shrink_idx", [None, 2])
def test_mmseg_layout_loads_and_matches_reference(shrink_idx):
    torch.manual_seed(0)
    ref = MMSegViT(shrink_idx=shrink_idx).eval()
    model, out_indices = vit_from_mmseg_kwargs(type="vit_shrink" if shrink_idx else "VisionTransformer", img_size=64,
                                               embed_dims=32, num_layers=4, num_heads=2, out_indices=[1, 3],
                                               with_cls_token=False, norm_cfg=dict(type="LN", eps=1e-6),
                                               shrink_idx=shrink_idx)
    report = vitlab.load_checkpoint(model.eval(), ref.state_dict(), strict=True)
    assert any("mmseg" in n for n in report.notes)
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = ref(img, out_indices), model.forward_intermediates(img, out_indices)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert got[-1].shape[-1] == (2 if shrink_idx else 4)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-5)


def test_timm_classifier_checkpoint_into_backbone_and_pos_resize():
    src = vitlab.create_model("vit_micro", img_size=32, num_classes=10)
    dst = vitlab.create_model("vit_micro", img_size=64, num_classes=0, final_norm=False)
    report = vitlab.load_checkpoint(dst, src.state_dict(), strict=True)
    text = " ".join(report.notes)
    assert "head.weight" in text and "norm.weight" in text and "resized pos_embed (1, 5, 64) -> (1, 17, 64)" in text
    torch.testing.assert_close(dst.pos_embed[:, :1], src.pos_embed[:, :1])  # class slot kept as is
    torch.testing.assert_close(dst.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_any_grid_and_shrink_on_odd_grid():
    model = VisionTransformer(img_size=64, embed_dim=32, depth=3, num_heads=2, shrink_idx=1, num_classes=0).eval()
    feats = model.forward_intermediates(torch.randn(1, 3, 80, 112))
    assert [tuple(f.shape[-2:]) for f in feats] == [(5, 7), (3, 4), (3, 4)]
    assert [i["reduction"] for i in model.feature_info] == [16, 32, 32]
    assert model(torch.randn(1, 3, 48, 48)).shape == (1, 32)


def test_position_embedding_interpolated_for_other_inputs():
    model = vitlab.create_model("vit_micro").eval()
    x = torch.randn(1, 3, 64, 64)
    big = F.interpolate(x, size=(128, 128), mode="nearest")
    assert model.forward_intermediates(big, [3])[0].shape == (1, 64, 8, 8)


def test_input_errors_are_clear():
    model = vitlab.create_model("vit_micro")
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.randn(1, 3, 60, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match="shrink_idx"):
        VisionTransformer(depth=4, shrink_idx=4)


def test_micro_trains():
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro", num_classes=2)
    x, y = torch.randn(8, 3, 64, 64), torch.tensor([0, 1] * 4)
    x[y == 1] += 1.0
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_forward_train_without_aux_head_is_the_plain_forward():
    torch.manual_seed(0)
    model = vitlab.create_model("vit_micro", num_classes=3).train()
    x = torch.randn(2, 3, 64, 64)
    out = model.forward_train(x)
    assert out.aux_logits is None and out.mix_box is None
    assert isinstance(out.logits, torch.Tensor) and out.logits.shape == (2, 3)
    torch.testing.assert_close(out.logits, model(x))


def test_forward_features_layout():
    model = vitlab.create_model("vit_micro").eval()
    assert model.forward_features(torch.randn(1, 3, 64, 96)).shape == (1, 1 + 4 * 6, 64)  # class token first
    no_cls = VisionTransformer(img_size=64, embed_dim=32, depth=3, num_heads=2, with_cls_token=False,
                               shrink_idx=1, num_classes=0).eval()
    assert no_cls.forward_features(torch.randn(1, 3, 80, 112)).shape == (1, 3 * 4, 32)  # ceil(5/2) x ceil(7/2)

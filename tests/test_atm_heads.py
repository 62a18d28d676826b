"""ATM decoder, query-upsampling head and ATM loss: manifests, any grid, loss semantics."""
import json

import pytest
import torch

from conftest import manifest_path
from vitlab.attention.atm import atm_attention
from vitlab.heads.atm_decoder import ATMHead, semantic_inference
from vitlab.heads.tpn import TPNATMHead
from vitlab.segmentation.losses import ATMLoss, dice_loss, present_classes, sigmoid_focal_loss

MANIFESTS = {"segvit_atm_vit_b_ade20k": ATMHead, "segvit_atm_vit_l_ade20k": ATMHead,
             "segvit_tpn_vit_l_shrunk_ade20k": TPNATMHead}


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_head_matches_official_manifest(name, require_fixtures):
    manifest = json.loads(manifest_path(name).read_text())
    with torch.device("meta"):
        head = MANIFESTS[name](**manifest["kwargs"])
    shapes = {k: list(v.shape) for k, v in head.state_dict().items()}
    assert list(shapes) == list(manifest["state_dict"])
    assert shapes == manifest["state_dict"]
    assert sum(p.numel() for p in head.parameters()) == manifest["params"]


def test_atm_attention_mask_is_head_mean_of_presoftmax_logits():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 5, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    out, mask = atm_attention(q, k, v, num_heads=2, scale=0.5)
    qh, kh, vh = (t.reshape(2, -1, 2, 4).transpose(1, 2) for t in (q, k, v))
    logits = qh @ kh.transpose(-1, -2) * 0.5
    torch.testing.assert_close(mask, logits.mean(1))
    torch.testing.assert_close(out, (logits.softmax(-1) @ vh).transpose(1, 2).reshape(2, 5, 8))


def _tiny_head(**kw):
    args = dict(img_size=32, in_channels=16, num_classes=4, embed_dims=16, num_layers=2, num_heads=2, use_stages=2)
    return ATMHead(**{**args, **kw})


@pytest.mark.parametrize("grid", [(7, 7), (5, 9), (1, 1)])
def test_atm_head_any_grid(grid):
    head = _tiny_head().eval()
    feats = [torch.randn(2, 16, *grid) for _ in range(2)]
    probs = head(feats, out_size=(grid[0] * 4, grid[1] * 4))
    assert probs.shape == (2, 4, grid[0] * 4, grid[1] * 4)
    assert torch.all(probs >= 0) and torch.all(probs <= 1)
    head.train()
    out = head(feats)
    assert out["pred_masks"].shape == (2, 4, 32, 32)
    assert out["aux_outputs"][0]["pred_masks"].shape == (2, 4, *grid)


def test_atm_masks_accumulate_across_stages():
    """The last stage's mask is the sum of every stage's (resized) mask: zeroing the deep stage's
    attention keys changes the final mask, so the sum really includes it."""
    head = _tiny_head().eval()
    feats = [torch.randn(1, 16, 8, 8), torch.randn(1, 16, 4, 4)]  # shallow (fine) -> deep (coarse)
    out = head.forward_outputs(feats, with_aux=True)
    first, last = out["aux_outputs"][0]["pred_masks"], out["pred_masks"]
    assert first.shape[-2:] == (8, 8)  # stage outputs live at the last (shallowest) grid
    with torch.no_grad():
        head.decoder_1.layers[-1].multihead_attn.k.weight.zero_()
        head.decoder_1.layers[-1].multihead_attn.k.bias.zero_()
    out2 = head.forward_outputs(feats, with_aux=True)
    assert torch.allclose(out2["aux_outputs"][0]["pred_masks"], torch.zeros_like(first), atol=1e-6)
    assert not torch.allclose(out2["pred_masks"], last)


def test_tpn_head_non_default_output_size():
    head = TPNATMHead(img_size=32, in_channels=16, num_classes=3, embed_dims=16, num_layers=2, num_heads=2,
                      use_stages=2, shrink_ratio=8).eval()
    feats = [torch.randn(1, 16, 4, 6), torch.randn(1, 16, 2, 3)]
    probs = head(feats, out_size=(32, 48))
    assert probs.shape == (1, 3, 32, 48)


def test_semantic_inference_is_weighted_mask_sum():
    logits = torch.tensor([[[10.0, -10.0, -10.0], [-10.0, -10.0, 10.0]]])  # query 0 -> class 0, query 1 -> no-object
    masks = torch.full((1, 2, 2, 2), 10.0)
    probs = semantic_inference(logits, masks)
    assert probs[0, 0].min() > 0.99 and probs[0, 1].max() < 0.01


def test_atm_loss_ignore_pixels_are_negatives_and_no_object_weight():
    crit = ATMLoss(num_classes=3, dec_layers=1)
    label = torch.tensor([[[0, 0], [255, 2]]])
    b, c = present_classes(label, 3, 255)
    assert b.tolist() == [0, 0] and c.tolist() == [0, 2]
    # a prediction that marks the ignored pixel positive for class 0 costs more than one that marks it negative
    base = torch.full((1, 3, 2, 2), -8.0)
    base[0, 0, 0] = 8.0
    base[0, 2, 1, 1] = 8.0
    logits = torch.zeros(1, 3, 4)
    good = crit({"pred_logits": logits, "pred_masks": base}, label)
    bad_masks = base.clone()
    bad_masks[0, 0, 1, 0] = 8.0
    bad = crit({"pred_logits": logits, "pred_masks": bad_masks}, label)
    assert bad["loss_mask"] > good["loss_mask"] * 10 and bad["loss_dice"] > good["loss_dice"]
    # uniform logits: CE is log(4) for each query, the no-object query weighted 0.1 in the mean -> still log(4)
    torch.testing.assert_close(good["loss_ce"], torch.log(torch.tensor(4.0)))


def test_atm_loss_terms_match_definitions():
    torch.manual_seed(0)
    x, t = torch.randn(3, 10), (torch.rand(3, 10) > 0.5).float()
    p = x.sigmoid()
    dice = (1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)).sum() / 2
    torch.testing.assert_close(dice_loss(x, t, 2), dice)
    pt = torch.where(t > 0, p, 1 - p)
    focal = (torch.where(t > 0, 0.25, 0.75) * -(pt.log()) * (1 - pt) ** 2).mean(1).sum() / 2
    torch.testing.assert_close(sigmoid_focal_loss(x, t, 2), focal)


def test_atm_loss_rejects_out_of_range_labels():
    crit = ATMLoss(num_classes=3, dec_layers=1)
    out = {"pred_logits": torch.zeros(1, 3, 4), "pred_masks": torch.zeros(1, 3, 2, 2)}
    with pytest.raises(ValueError, match=r"\[0, 3\).*found 7"):
        crit(out, torch.tensor([[[0, 7], [1, 2]]]))


def test_atm_loss_decreases_when_training_head():
    torch.manual_seed(0)
    head = _tiny_head(use_stages=1, num_layers=1).train()
    feats = [torch.randn(2, 16, 4, 4)]
    label = torch.randint(0, 4, (2, 1, 1)).repeat(1, 32, 32)
    label[:, :16] = 3
    crit = ATMLoss(num_classes=4, dec_layers=1)
    opt = torch.optim.AdamW(head.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        loss = sum(crit(head(feats), label).values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first

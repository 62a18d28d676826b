"""Pale Transformer model: sizes against the paper, dense features at any input size, API behaviour."""
import pytest
import torch

import vitlab
from vitlab.bench.flops import count_macs
from vitlab.models.pale import PaleTransformer

# arXiv 2112.14000 Table 2: params (M) and FLOPs (G multiply-adds) at 224x224
PAPER = {"pale_tiny": (22.0, 4.2), "pale_small": (48.0, 9.0), "pale_base": (85.0, 15.6)}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_params_and_macs_match_paper(name):
    params_m, gmacs = PAPER[name]
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = vitlab.create_model(name)
        macs, _ = count_macs(model, torch.empty(1, 3, 224, 224))
    n = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(n - params_m) / params_m < 0.03, f"{name}: {n:.2f}M params vs {params_m}M in the paper"
    assert abs(macs / 1e9 - gmacs) / gmacs < 0.03, f"{name}: {macs / 1e9:.2f} GMACs vs {gmacs} in the paper"


def test_variant_equals_family_with_the_same_kwargs():
    torch.manual_seed(0)
    a = vitlab.create_model("pale_micro", num_classes=5).eval()
    b = vitlab.create_model("pale", embed_dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4),
                            pale_size=4, img_size=64, num_classes=5).eval()
    b.load_state_dict(a.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(a(x), b(x))
    assert sum(p.numel() for p in a.parameters()) < 1_000_000


@pytest.mark.parametrize("hw", [(64, 64), (57, 90), (31, 17), (3, 5)])
def test_intermediates_at_strides_4_8_16_32_for_any_size(hw):
    model = vitlab.create_model("pale_micro").eval()
    x = torch.randn(2, 3, *hw)
    feats = model.forward_intermediates(x)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    for f, info in zip(feats, model.feature_info):
        r = info["reduction"]
        assert f.shape == (2, info["channels"], -(-hw[0] // r), -(-hw[1] // r))
        assert f.is_contiguous() and torch.isfinite(f).all()
    # the last intermediate, normalised, is what forward_features returns
    final = model.norm(feats[-1].permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
    torch.testing.assert_close(final, model.forward_features(x))
    assert [t.shape for t in model.forward_intermediates(x, indices=[0, -1])] == [feats[0].shape, feats[-1].shape]


def test_forward_head_and_reset_classifier():
    model = vitlab.create_model("pale_micro", num_classes=7).eval()
    x = torch.randn(2, 3, 40, 40)
    f = model.forward_features(x)
    assert model(x).shape == (2, 7)
    assert model.forward_head(f, pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)


def test_grad_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = vitlab.create_model("pale_micro", num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    # BatchNorm uses batch statistics in training; both passes see the same batch, so results match
    ref = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    model.set_grad_checkpointing(True)
    got = torch.autograd.grad(model(x).sum(), list(model.parameters()))
    for a, b in zip(ref, got):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_stochastic_depth_schedule_and_cpe_switch():
    model = vitlab.create_model("pale_micro", drop_path_rate=0.3)
    rates = [getattr(b.drop_path, "drop_prob", 0.0) for s in model.stages for b in s.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    no_cpe = vitlab.create_model("pale_micro", use_cpe=False)
    assert not any(".cpe." in k for k in no_cpe.state_dict())
    assert any(".cpe." in k for k in model.state_dict())


def test_per_stage_and_rectangular_pale_sizes():
    model = vitlab.create_model("pale_micro", pale_size=[(2, 4), 3, 2, 1]).eval()
    assert model.stages[0].blocks[0].attn.pale_size == (2, 4)
    assert model.stages[3].blocks[0].attn.pale_size == (1, 1)
    assert model(torch.randn(1, 3, 48, 40)).shape == (1, 1000)


def test_bad_configuration_and_input_errors():
    with pytest.raises(ValueError, match="even"):
        PaleTransformer(embed_dims=(16, 32, 64, 128), depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 4))
    with pytest.raises(ValueError, match="one entry per stage"):
        PaleTransformer(embed_dims=(16, 32), depths=(1, 1, 1, 1), num_heads=(2, 2, 4, 4))
    model = vitlab.create_model("pale_micro")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = vitlab.create_model("pale_micro", num_classes=3).eval()
    model.save_pretrained(tmp_path / "pale")
    again = vitlab.from_pretrained(tmp_path / "pale").eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(model(x), again(x))

"""Light UniFormer (XXS/XS): official manifests, token pruning without global state."""
import json

import pytest
import torch

import vitlab
from conftest import manifest_path
from vitlab.models.base import TrainOutput
from vitlab.models.uniformer_light import PruneState, PruningAttnBlock

MICRO = dict(depth=[1, 1, 3, 2], conv_stem=True, embed_dim=[16, 32, 64, 96], head_dim=16, mlp_ratio=[3] * 4,
             prune_ratio=[[], [], [1, 0.5, 0.5], [0.5, 0.5]], trade_off=[[], [], [1, 0.5, 0.5], [0.5, 0.5]],
             num_classes=10)


@pytest.mark.parametrize("variant", ["uniformer_xxs", "uniformer_xs"])
def test_light_variant_matches_official_manifest(require_fixtures, variant):
    spec = json.loads(manifest_path(variant).read_text())
    with torch.device("meta"):
        model = vitlab.create_model(variant)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(spec["state_dict"])
    assert all(shapes[k] == list(v) for k, v in spec["state_dict"].items())
    assert abs(sum(p.numel() for p in model.parameters()) - spec["params"]) <= 1e-3 * spec["params"]


def test_pruning_is_per_sample_and_re_entrant():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_light", **MICRO).eval()
    x = torch.randn(3, 3, 96, 128)
    with torch.no_grad():
        batch = model(x)
        singles = torch.cat([model(x[i:i + 1]) for i in range(3)])
        other = model(torch.randn(2, 3, 64, 64))  # another size in between changes nothing
        again = model(x)
    torch.testing.assert_close(batch, singles, atol=1e-5, rtol=0)
    torch.testing.assert_close(batch, again)
    assert other.shape == (2, 10)


def test_forward_returns_head_logits_in_train_and_eval_mode():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_light", **MICRO)
    x = torch.randn(2, 3, 64, 64)
    for mode in (True, False):
        out = model.train(mode)(x)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 10), f"training={mode}"
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.forward_head(model.forward_features(x)))


def test_forward_train_pairs_mean_and_class_token_heads():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_light", **MICRO).train()
    x = torch.randn(2, 3, 64, 64)
    out = model.forward_train(x)
    assert isinstance(out, TrainOutput) and out.mix_box is None
    assert out.logits.shape == (2, 10) and out.aux_logits.shape == (2, 1, 10)
    (out.logits.sum() + out.aux_logits.sum()).backward()
    assert model.cls_token.grad is not None and model.cls_upsample.weight.grad is not None
    assert model.head_cls.weight.grad is not None
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.forward_train(x).logits, model(x))


def test_forward_train_feeds_the_token_labeling_loss():
    from vitlab.data.mixup import smooth_one_hot
    from vitlab.engine.losses import classification_loss, soft_cross_entropy
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_light", **MICRO).eval()
    x, target = torch.randn(2, 3, 64, 64), smooth_one_hot(torch.tensor([1, 7]), 10, 0.1)
    with torch.no_grad():
        out = model.forward_train(x)
        loss = classification_loss(out, target, aux_weight=1.0)
    expected = soft_cross_entropy(out.logits, target) + soft_cross_entropy(out.aux_logits, target.unsqueeze(1))
    torch.testing.assert_close(loss, expected)


def test_pruning_block_keeps_top_tokens_and_restores_order():
    torch.manual_seed(0)
    block = PruningAttnBlock(32, 2, prune_ratio=0.5, trade_off=0.5).eval()
    x, cls = torch.randn(1, 32, 4, 4), torch.randn(1, 1, 32)
    scores = torch.rand(1, 16)
    state = PruneState(scores.clone(), torch.arange(16).unsqueeze(0))
    with torch.no_grad():
        _, out = block(cls, x, state)
    assert torch.equal(state.positions, torch.arange(16).unsqueeze(0))  # original order restored
    dropped = scores.argsort(descending=True)[0, 8:]
    kept = scores.argsort(descending=True)[0, :8]
    # scores of dropped tokens are untouched; kept ones were re-mixed with the class attention
    torch.testing.assert_close(state.scores[0, dropped], scores[0, dropped])
    assert not torch.allclose(state.scores[0, kept], scores[0, kept])
    # all dropped tokens received the same (fast) update
    delta = (out - x - block.pos_embed(x)).flatten(2)[0].T
    d = delta[dropped]
    torch.testing.assert_close(d, d[:1].expand_as(d), atol=1e-5, rtol=0)


def test_first_block_must_initialise_scores():
    bad = dict(MICRO, prune_ratio=[[], [], [0.5, 0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="must not prune"):
        vitlab.create_model("uniformer_light", **bad)
    with pytest.raises(ValueError, match="last stage-3 block must prune"):
        vitlab.create_model("uniformer_light", **dict(MICRO, prune_ratio=[[], [], [1, 0.5, 1], [0.5, 0.5]]))


def test_pruning_reduces_multiply_adds():
    from vitlab.bench.flops import count_macs
    x = torch.randn(1, 3, 128, 128)
    pruned = vitlab.create_model("uniformer_light", **MICRO)
    dense = vitlab.create_model("uniformer_light", **dict(MICRO, prune_ratio=[[], [], [1, 1, 0.5], [1, 1]]))
    macs_pruned, _ = count_macs(pruned, x)
    macs_dense, _ = count_macs(dense, x)
    assert macs_pruned < 0.9 * macs_dense

"""Recipe pieces: parameter groups, layer decay, warmup+cosine, EMA, losses, mixup/cutmix, config merging."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.data.mixup import Mixup, smooth_one_hot
from vitlab.engine.config import build_config, parse_set
from vitlab.engine.ema import ModelEma
from vitlab.engine.losses import classification_loss, soft_cross_entropy
from vitlab.engine.optim import create_optimizer, layer_ids, param_groups
from vitlab.engine.scheduler import WarmupCosine, lr_at
from vitlab.models.base import TrainOutput


@pytest.fixture(scope="module")
def volo():
    return vitlab.create_model("volo_micro", num_classes=5, img_size=32, patch_size=4)


def test_no_weight_decay_on_norms_biases_and_model_exclusions(volo):
    groups = param_groups(volo, 0.05)
    no_wd = {n for g in groups if g["weight_decay"] == 0 for n in g["param_names"]}
    wd = {n for g in groups if g["weight_decay"] > 0 for n in g["param_names"]}
    assert {"pos_embed", "cls_token", "norm.weight", "head.bias"} <= no_wd
    assert "head.weight" in wd and "network.0.0.mlp.fc1.weight" in wd
    assert not any(n.endswith(".bias") or "norm" in n.split(".")[-2] for n in wd)
    assert len(no_wd) + len(wd) == len(list(volo.parameters()))


def test_layer_decay_scales_grow_with_depth(volo):
    ids, num_layers = layer_ids(volo)
    assert ids["patch_embed.conv.0.weight"] == 0 and ids["pos_embed"] == 0
    assert 0 < ids["network.0.0.mlp.fc1.weight"] < ids["network.2.0.mlp.fc1.weight"] < ids["head.weight"]
    assert ids["head.weight"] == num_layers - 1
    groups = param_groups(volo, 0.05, layer_decay=0.5)
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert scale["head.weight"] == 1.0 and scale["patch_embed.conv.0.weight"] == 0.5 ** (num_layers - 1)
    opt = create_optimizer(volo, {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.999],
                                  "eps": 1e-8, "layer_decay": 0.5})
    sched = WarmupCosine(opt, 100, 1e-3)
    assert all(g["lr"] / g["lr_scale"] == pytest.approx(sched.current()) for g in opt.param_groups)


def test_warmup_then_cosine_per_step():
    assert lr_at(0, 100, 1.0, warmup_steps=10, warmup_lr=0.0) == 0.0
    assert lr_at(5, 100, 1.0, warmup_steps=10, warmup_lr=0.0) == pytest.approx(0.5)
    assert lr_at(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, warmup_steps=10, min_lr=0.0) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, warmup_steps=10, min_lr=0.1) == pytest.approx(0.1)
    values = [lr_at(s, 100, 1.0, 10) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_ema_tracks_the_weights():
    model = torch.nn.Linear(3, 2)
    ema = ModelEma(model, decay=0.5, warmup=False)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.5 * before + 0.5 * model.weight)
    assert ModelEma(model, decay=0.9999).current_decay() == pytest.approx(0.1)  # warmup: (1+0)/(10+0)


def test_volo_loss_is_class_ce_plus_half_dense_ce():
    torch.manual_seed(0)
    cls, aux = torch.randn(4, 5), torch.randn(4, 16, 5)
    y = torch.tensor([0, 1, 2, 3])
    target = smooth_one_hot(y, 5, 0.0)
    loss = classification_loss((cls, aux), target, aux_weight=0.5)
    expected = F.cross_entropy(cls, y) + 0.5 * F.cross_entropy(aux.reshape(-1, 5), y.repeat_interleave(16))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    maps = torch.rand(4, 5, 8, 8)
    dense = classification_loss((cls, aux), target, 0.5, token_maps=maps)
    probs = F.adaptive_avg_pool2d(maps, 4).flatten(2).transpose(1, 2)
    probs = probs / probs.sum(-1, keepdim=True)
    assert dense.item() == pytest.approx((F.cross_entropy(cls, y) + 0.5 * soft_cross_entropy(aux, probs)).item(),
                                         rel=1e-5)
    # MixToken: a 2x2 box out of the 4x4 grid keeps lam = 0.75 of each image for the class token
    mixed = classification_loss((cls, aux, (0, 0, 2, 2)), target, 0.5)
    cls_target = 0.75 * target + 0.25 * target.flip(0)
    assert mixed.item() == pytest.approx((soft_cross_entropy(cls, cls_target) + 0.5 * F.cross_entropy(
        aux.reshape(-1, 5), y.repeat_interleave(16))).item(), rel=1e-6)
    # a TrainOutput is the same tuple; missing aux / box fields are None
    assert classification_loss(TrainOutput(cls, aux, (0, 0, 2, 2)), target, 0.5).item() == mixed.item()
    assert classification_loss(TrainOutput(cls, aux), target, aux_weight=0.5).item() == loss.item()
    assert classification_loss((cls, aux, None), target, aux_weight=0.5).item() == loss.item()
    plain = classification_loss(TrainOutput(cls), target)
    assert plain.item() == pytest.approx(F.cross_entropy(cls, y).item(), rel=1e-6)
    assert classification_loss(cls, target).item() == plain.item()


def test_classification_loss_errors_are_clear():
    cls, aux = torch.randn(2, 3), torch.randn(2, 4, 3)
    target = smooth_one_hot(torch.tensor([0, 2]), 3, 0.0)
    with pytest.raises(ValueError, match="token labels need a model with an auxiliary token head"):
        classification_loss(TrainOutput(cls), target, token_maps=torch.rand(2, 3, 2, 2))
    with pytest.raises(ValueError, match="token labels need"):
        classification_loss(cls, target, token_maps=torch.rand(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"aux logits must be \(B, N, K\), got \(2, 3\)"):
        classification_loss((cls, cls), target)
    with pytest.raises(ValueError, match=r"class logits must be \(B, K\)"):
        classification_loss((aux, aux), target)
    with pytest.raises(ValueError, match="MixToken box needs the aux logits"):
        classification_loss(TrainOutput(cls, None, (0, 0, 1, 1)), target)
    with pytest.raises(TypeError, match="forward_train"):
        classification_loss({"logits": cls}, target)


def test_volo_mix_token_training_step_runs():
    model = vitlab.create_model("volo_micro", num_classes=3, img_size=32, patch_size=4, mix_token=True)
    out = model.forward_train(torch.randn(2, 3, 32, 32))
    assert isinstance(out, TrainOutput) and out.mix_box is not None and out.aux_logits.shape == (2, 16, 3)
    loss = classification_loss(out, smooth_one_hot(torch.tensor([0, 2]), 3, 0.1))
    loss.backward()
    assert math.isfinite(loss.item())
    assert model.aux_head.weight.grad is not None and model.head.weight.grad is not None


def test_label_smoothing_and_mixup_targets():
    y = torch.tensor([0, 1, 2, 3])
    t = smooth_one_hot(y, 4, 0.1)
    assert torch.allclose(t.sum(1), torch.ones(4)) and t[0, 0] == pytest.approx(0.925)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 1, 8, 8).contiguous()
    mixed, target, lam = Mixup(4, mixup_alpha=1.0, smoothing=0.0)(x, y, np.random.default_rng(0))
    assert torch.allclose(mixed[0], lam * x[0] + (1 - lam) * x[3])
    assert torch.allclose(target[0], torch.tensor([lam, 0, 0, 1 - lam]))
    mixed, target, lam = Mixup(4, cutmix_alpha=1.0, smoothing=0.0)(x, y, np.random.default_rng(1))
    kept = (mixed[0] == x[0]).float().mean().item()
    assert kept == pytest.approx(lam) and target[0, 0] == pytest.approx(lam)


def test_config_merging_and_errors(tmp_path):
    (tmp_path / "r.yaml").write_text("optim:\n  lr: 0.01\nmodel:\n  kwargs:\n    img_size: 32\n")
    cfg = build_config(tmp_path / "r.yaml", parse_set(["optim.lr=3e-4", "model.kwargs.patch_size=4"]))
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["kwargs"] == {"img_size": 32, "patch_size": 4}
    assert cfg["optim"]["weight_decay"] == 0.05
    with pytest.raises(ValueError, match="unknown config key 'optim.learning_rate'"):
        build_config(overrides={"optim": {"learning_rate": 1}})
    with pytest.raises(ValueError, match="--set expects key.path=value"):
        parse_set(["optim.lr"])

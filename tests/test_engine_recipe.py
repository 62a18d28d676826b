"""Recipe pieces: parameter groups, layer decay, warmup+cosine, EMA, losses, mixup/cutmix, config merging."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vitlab
from vitlab.data.mixup import Mixup, smooth_one_hot
from vitlab.engine.config import parse_set
from vitlab.engine.ema import ModelEma
from vitlab.engine.losses import classification_loss, soft_cross_entropy
from vitlab.engine.optim import clip_gradients, create_optimizer, layer_ids, param_groups
from vitlab.engine.schedule import StepSchedule, cosine_value, lr_at, poly_lr_at, step_lr_at
from vitlab.errors import ConfigError
from vitlab.tasks import make_config
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
    sched = StepSchedule(opt, name="cosine", base_lr=1e-3, total_steps=100)
    assert all(g["lr"] / g["lr_scale"] == pytest.approx(sched.current()) for g in opt.param_groups)


def test_lr_multiplier_by_prefix_and_dino_weight_decay_rule(volo):
    groups = param_groups(volo, 0.05, lr_mult={"head": 10.0, "aux_head": 3.0})
    scale = {n: g["lr_scale"] for g in groups for n in g["param_names"]}
    assert scale["head.weight"] == 10.0 and scale["aux_head.weight"] == 3.0 and scale["norm.weight"] == 1.0
    wd = {n for g in param_groups(volo, 0.05, no_decay_from_model=False) if g["wd_scale"] for n in g["param_names"]}
    assert {"pos_embed", "cls_token"} <= wd and "norm.weight" not in wd   # DINO: only biases and 1-D tensors skip
    assert "pos_embed" not in {n for g in param_groups(volo, 0.05) if g["wd_scale"] for n in g["param_names"]}


def test_weight_decay_schedule_and_per_parameter_clipping():
    model = torch.nn.Linear(4, 3)
    opt = create_optimizer(model, {"name": "adamw", "lr": 1.0, "weight_decay": 0.04, "betas": [0.9, 0.999],
                                   "eps": 1e-8})
    sched = StepSchedule(opt, name="cosine", base_lr=1.0, total_steps=10, weight_decay=0.04, weight_decay_end=0.4)
    for _ in range(5):
        sched.step()
    decayed = [g for g in opt.param_groups if g["wd_scale"]]
    assert decayed[0]["weight_decay"] == pytest.approx(cosine_value(5, 10, 0.04, 0.4)) == pytest.approx(0.22)
    assert all(g["weight_decay"] == 0 for g in opt.param_groups if not g["wd_scale"])   # the bias
    model.weight.grad, model.bias.grad = torch.full((3, 4), 3.0), torch.full((3,), 0.1)
    clip_gradients(model.parameters(), 1.0, "per_param")
    assert model.weight.grad.norm().item() == pytest.approx(1.0, rel=1e-5)
    assert model.bias.grad.norm().item() == pytest.approx(0.1 * 3 ** 0.5, rel=1e-5)   # below the limit: untouched


def test_poly_schedule_decays_over_every_step_as_mmcv():
    """mmcv's PolyLrUpdaterHook: (base - min) * (1 - t/T)^p + min over all T steps, warm-up multiplies it."""
    base, T, W, ratio = 6e-5, 100, 10, 1e-6
    assert poly_lr_at(0, T, base, W, base * ratio) == pytest.approx(base * ratio)
    assert poly_lr_at(5, T, base, W, base * ratio) == pytest.approx(base * 0.95 * (1 - 0.5 * (1 - ratio)))
    assert poly_lr_at(10, T, base, W) == pytest.approx(base * 0.9)       # not base: the decay started at step 0
    assert poly_lr_at(55, T, base, W, min_lr=1e-6, power=1.0) == pytest.approx((base - 1e-6) * 0.45 + 1e-6)
    assert poly_lr_at(100, T, base, W) == 0.0


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
    from vitlab.engine.config import load_yaml
    (tmp_path / "r.yaml").write_text("optim:\n  lr: 0.01\nmodel:\n  kwargs:\n    img_size: 32\n")
    cfg = make_config("classification", [("r.yaml", load_yaml(tmp_path / "r.yaml")),
                                         ("--set", parse_set(["optim.lr=3e-4", "model.kwargs.patch_size=4"]))])
    assert cfg["optim"]["lr"] == 3e-4 and cfg["model"]["kwargs"] == {"img_size": 32, "patch_size": 4}
    assert cfg["optim"]["weight_decay"] == 0.05 and cfg["task"] == "classification"
    with pytest.raises(ConfigError, match="unknown config key 'optim.learning_rate' in x"):
        make_config("classification", [("x", {"optim": {"learning_rate": 1}})])
    with pytest.raises(ConfigError, match="--set expects section.key=value"):
        parse_set(["optim.lr"])
    with pytest.raises(ConfigError, match="unknown config key 'seg' in x"):
        make_config("classification", [("x", {"seg": {"crop_size": 3}})])   # a section of another task
    assert make_config("segmentation", [("x", {"seg": {"crop_size": 3}})])["seg"]["crop_size"] == 3


@pytest.mark.parametrize("layer, message", [
    ({"optim": {"lr": "abc"}}, "optim.lr: expected a number, got 'abc' (a string)"),
    ({"optim": {"weight_decay": [1, 2]}}, "optim.weight_decay: expected a number, got [1, 2] (a list)"),
    ({"optim": {"betas": [0.9]}}, "optim.betas: expected a list of 2 values"),
    ({"sched": {"epochs": 2.5}}, "sched.epochs: expected an integer, got 2.5"),
    ({"sched": {"epochs": 0}}, "sched.epochs: must be at least 1, got 0"),
    ({"data": {"batch_size": 0}}, "data.batch_size: must be at least 1"),
    ({"optim": {"accum_steps": 0}}, "optim.accum_steps: must be at least 1"),
    ({"ema": {"enabled": "yes"}}, "ema.enabled: expected true or false, got 'yes'"),
    ({"amp": {"dtype": "fp8"}}, "amp.dtype: must be one of null, bf16, fp16, got 'fp8'"),
    ({"model": {"kwargs": [1]}}, "model.kwargs: expected a mapping"),
    ({"optim": 3}, "section 'optim' must be a mapping"),
])
def test_wrong_types_are_refused_naming_the_key(layer, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")
                       .replace(")", r"\)").replace(".", r"\.")):
        make_config("classification", [("x", layer)])


def test_a_corrupt_yaml_file_names_the_file_and_line(tmp_path):
    from vitlab.engine.config import load_yaml
    (tmp_path / "bad.yaml").write_text("model:\n  name: volo_micro\n  kwargs: {img_size: 32\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+:\d+: not valid YAML .*line 3"):
        load_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping of config sections"):
        load_yaml(tmp_path / "list.yaml")


def test_an_explicit_flag_beats_a_preset_even_when_it_equals_the_default(tmp_path):
    """`vitlab pretrain --preset small --lr 5e-4 --global-size 224` used to run at lr 0.004 and 32 px."""
    import argparse
    from vitlab.cli import pretrain
    from vitlab.cli.common import run_config
    parser = argparse.ArgumentParser()
    pretrain.add_arguments(parser)
    small = run_config(parser.parse_args(["--preset", "small"]), task="pretraining", flags=pretrain.FLAGS,
                       switches=pretrain.SWITCHES)
    assert (small["optim"]["lr"], small["esvit"]["global_size"], small["esvit"]["n_local"]) == (0.004, 32, 0)
    args = parser.parse_args(["--preset", "small", "--lr", "5e-4", "--global-size", "224", "--n-local", "8"])
    cfg = run_config(args, task="pretraining", flags=pretrain.FLAGS, switches=pretrain.SWITCHES)
    assert (cfg["optim"]["lr"], cfg["esvit"]["global_size"], cfg["esvit"]["n_local"]) == (5e-4, 224, 8)
    assert cfg["esvit"]["out_dim"] == 1024                                 # the rest of the preset stays
    with pytest.raises(ConfigError, match="unknown preset 'tiny'"):
        run_config(parser.parse_args(["--preset", "tiny"]), task="pretraining", flags=pretrain.FLAGS)


def test_step_schedule_is_mmdetections_1x():
    """mmcv's StepLrUpdaterHook with a 500-step linear warm-up from ratio 0.001, x0.1 at epochs 8 and 11."""
    base, per_epoch = 1e-4, 100
    milestones = [8 * per_epoch, 11 * per_epoch]
    assert step_lr_at(0, base, milestones, 0.1, 500, base * 1e-3) == pytest.approx(base * 1e-3)
    assert step_lr_at(250, base, milestones, 0.1, 500, base * 1e-3) == pytest.approx(base * (1 - 0.5 * 0.999))
    assert step_lr_at(799, base, milestones, 0.1, 500) == pytest.approx(base)
    assert step_lr_at(800, base, milestones, 0.1, 500) == pytest.approx(base * 0.1)
    assert step_lr_at(1100, base, milestones, 0.1, 500) == pytest.approx(base * 0.01)
    cfg = make_config("classification", [("x", {"sched": {"name": "step", "milestones": [8, 11]}})])
    assert cfg["sched"]["milestones"] == [8.0, 11.0] and cfg["sched"]["gamma"] == 0.1

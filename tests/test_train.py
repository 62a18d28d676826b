"""End-to-end training on a micro model: the run folder, learning, errors, NaN handling."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vitlab.data.datasets import ArrayDataset
from vitlab.data.registry import DatasetBundle, register_dataset
from vitlab.engine.checkpoint import load_training_state
from vitlab.engine.trainer import TrainingDiverged, train
from test_train_utils import micro_config, read_metrics


def test_micro_run_learns_and_writes_its_folder(tmp_path):
    cfg = micro_config(tmp_path / "run", sched={"epochs": 3}, ema={"enabled": True, "decay": 0.9},
                       run={"plots": True, "log_every": 1}, optim={"lr": 3e-3})
    result = train(cfg)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.pth", "best.pth", "final.json", "curves.png", "confusion.png",
            "model"} <= files
    records = read_metrics(tmp_path / "run")
    evals = [r for r in records if r["kind"] == "eval"]
    train_losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert len(evals) == 3 and all("ema_top1" in r for r in evals)
    assert np.mean(train_losses[-4:]) < np.mean(train_losses[:4]) - 0.3   # it learns
    assert result["top1"] > 25.0                            # 10 classes: chance is 10%
    state = load_training_state(tmp_path / "run")
    assert state["step"] == result["step"] == 3 * (320 // 16)
    assert state["state_dict_ema"] is not None and state["num_classes"] == 10
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert np.array(final["confusion"]).sum() == 200


def test_config_yaml_repeats_the_run(tmp_path):
    from vitlab.engine.config import build_config
    cfg = micro_config(tmp_path / "a", sched={"epochs": 1, "max_steps": 4})
    train(cfg)
    again = build_config(tmp_path / "a" / "config.yaml", {"run": {"output": str(tmp_path / "b")}})
    train(again)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def _register(name, images, labels, num_classes):
    def build(req):
        ds = ArrayDataset(images, labels, num_classes, req.train_transform)
        ds.labels = labels  # bypasses the constructor check, as a plugin dataset might
        return DatasetBundle(train=ds, val=ArrayDataset(images[:8], np.zeros(8, np.int64), num_classes,
                                                        req.eval_transform),
                             class_names=[str(i) for i in range(num_classes)], in_chans=1, mean=(0.5,), std=(0.5,))
    register_dataset(name, build)


class _PoisonedAfter(ArrayDataset):
    """Returns NaN images once ``after`` samples have been loaded (data corruption mid-run)."""

    def __init__(self, *a, after: int, **k):
        super().__init__(*a, **k)
        self.after, self.loaded = after, 0

    def load(self, idx, generator):
        x, y = super().load(idx, generator)
        self.loaded += 1
        return (torch.full_like(x, float("nan")) if self.loaded > self.after else x), y


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (64, 16, 16), dtype=np.uint8)
    labels = np.arange(64) % 4

    def build(req):
        return DatasetBundle(train=_PoisonedAfter(images, labels, 4, req.train_transform, after=4 * 8),
                             val=ArrayDataset(images[:8], labels[:8], 4, req.eval_transform),
                             class_names=list("abcd"), in_chans=1, mean=(0.5,), std=(0.5,))
    register_dataset("test-nan", build)
    cfg = micro_config(tmp_path / "run", data={"name": "test-nan", "batch_size": 8, "options": {}},
                       run={"checkpoint_every": 2})
    with pytest.raises(TrainingDiverged, match=r"loss is nan at step 5 \(epoch 1\).*last good checkpoint"):
        train(cfg)
    state = load_training_state(tmp_path / "run")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_labels_out_of_range_give_a_clear_error(tmp_path):
    images = np.zeros((32, 16, 16), dtype=np.uint8)
    _register("test-badlabels", images, np.full(32, 7), 4)
    cfg = micro_config(tmp_path / "run", data={"name": "test-badlabels", "batch_size": 8, "options": {}})
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\]"):
        train(cfg)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\] for 4 classes"):
        ArrayDataset(images, np.full(32, 7), 4)


def test_resume_refuses_a_checkpoint_for_another_class_count(tmp_path):
    train(micro_config(tmp_path / "run", sched={"epochs": 1, "max_steps": 2}))
    images = np.zeros((32, 16, 16), dtype=np.uint8)
    _register("test-4cls", images, np.arange(32) % 4, 4)
    cfg = micro_config(tmp_path / "run", data={"name": "test-4cls", "options": {}})
    with pytest.raises(ValueError, match="trained for 10 classes but the dataset has 4"):
        train(cfg, resume=tmp_path / "run")


def test_token_labels_and_mix_token_train_the_aux_head(tmp_path):
    maps = torch.rand(64, 10, 4, 4)
    torch.save(maps, tmp_path / "maps.pt")
    recipe = dict(data={"options": {"held_out": 200, "train_limit": 64}},
                  sched={"epochs": 1, "max_steps": 3}, aug={"scale": [1.0, 1.0], "hflip": 0.0, "mix_token": True,
                                                            "token_labels": str(tmp_path / "maps.pt")})
    result = train(micro_config(tmp_path / "run", **recipe))
    assert result["step"] == 3
    losses = [r["loss"] for r in read_metrics(tmp_path / "run") if r["kind"] == "train"]
    assert all(np.isfinite(losses))
    bad = micro_config(tmp_path / "bad", **recipe)
    bad["aug"]["hflip"] = 0.5
    with pytest.raises(ValueError, match="token labels are not warped.*aug.hflip"):
        train(bad)
    torch.save(torch.rand(63, 10, 4, 4), tmp_path / "short.pt")
    short = micro_config(tmp_path / "short", **recipe)
    short["aug"]["token_labels"] = str(tmp_path / "short.pt")
    with pytest.raises(ValueError, match="63 token-label maps for a training set of 64 images"):
        train(short)


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    common = dict(model={"freeze_bn": True}, sched={"epochs": 1, "max_steps": 4})
    big = micro_config(tmp_path / "big", data={"batch_size": 16}, **common)
    acc = micro_config(tmp_path / "acc", data={"batch_size": 8}, optim={"lr": 2e-3, "accum_steps": 2}, **common)
    train(big)
    train(acc)
    loss = lambda d: [r["loss"] for r in read_metrics(d) if r["kind"] == "train"]  # noqa: E731
    assert len(loss(tmp_path / "acc")) == 4
    assert loss(tmp_path / "acc") == pytest.approx(loss(tmp_path / "big"), rel=1e-4)


def test_speed_and_memory_switches_run(tmp_path):
    """bf16 autocast, channels-last, gradient checkpointing, clipping and layer decay together."""
    cfg = micro_config(tmp_path / "run", amp={"dtype": "bf16"}, sched={"epochs": 1, "max_steps": 3},
                       model={"channels_last": True, "grad_checkpointing": True, "drop_path": 0.1},
                       optim={"clip_grad": 1.0, "layer_decay": 0.75, "lr": 2e-3})
    result = train(cfg, return_model=True)
    assert result["step"] == 3 and result["model"].grad_checkpointing
    assert all(np.isfinite(r["loss"]) for r in read_metrics(tmp_path / "run") if r["kind"] == "train")


@pytest.mark.slow
def test_torch_compile_switch(tmp_path):
    result = train(micro_config(tmp_path / "run", model={"compile": True}, sched={"epochs": 1, "max_steps": 2}))
    assert result["step"] == 2

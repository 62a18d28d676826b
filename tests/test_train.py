"""End-to-end classification on the engine: the run folder, learning, errors, NaN handling, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vitlab
from vitlab.data.datasets import ArrayDataset
from vitlab.data.registry import DatasetBundle, register_dataset
from vitlab.errors import ConfigError, DataError, RunFolderError, TrainingDiverged
from test_train_utils import load_state, micro_config, read_metrics, train, train_losses


def test_micro_run_learns_and_writes_its_folder(tmp_path):
    cfg = micro_config(tmp_path / "run", sched={"epochs": 3}, ema={"enabled": True, "decay": 0.9},
                       run={"plots": True, "log_every": 1}, optim={"lr": 3e-3})
    result = train(cfg)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.pth", "best.pth", "final.json", "curves.png", "confusion.png",
            "model"} <= files
    assert ".lock" not in files                                     # released at the end
    records = read_metrics(tmp_path / "run")
    evals = [r for r in records if r["kind"] == "eval"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    losses = train_losses(tmp_path / "run")
    assert len(evals) == len(epochs) == 3 and all("ema_top1" in r for r in evals)
    assert [r["epoch"] for r in evals] == [1, 2, 3]
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3         # it learns
    assert result["top1"] > 25.0                                     # 10 classes: chance is 10%
    state = load_state(tmp_path / "run")
    assert state["format"] == "vitlab.training_state" and state["step"] == result["step"] == 3 * (320 // 16)
    assert state["state_dict_ema"] is not None and state["meta"]["num_classes"] == 10
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert np.array(final["confusion"]).sum() == 200 and final["top1"] == pytest.approx(evals[-1]["top1"])


def test_config_yaml_repeats_the_run(tmp_path):
    from vitlab.engine.config import load_yaml
    from vitlab.tasks import make_config
    cfg = micro_config(tmp_path / "a", sched={"epochs": 1, "max_steps": 4})
    train(cfg)
    again = make_config("classification", [("a", load_yaml(tmp_path / "a" / "config.yaml")),
                                           ("b", {"run": {"output": str(tmp_path / "b")}})])
    train(again)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_a_run_folder_is_never_reused_by_accident(tmp_path):
    cfg = micro_config(tmp_path / "run", sched={"epochs": 1, "max_steps": 2})
    train(cfg)
    before = (tmp_path / "run" / "last.pth").read_bytes()
    with pytest.raises(RunFolderError, match="already holds files.*--resume.*--overwrite"):
        train(cfg)
    assert (tmp_path / "run" / "last.pth").read_bytes() == before    # nothing was touched
    train(cfg, overwrite=True)                                        # replacing it is asked for explicitly
    (tmp_path / "run" / ".lock").write_text("1@some-other-host\n")   # another machine's run is writing here
    with pytest.raises(RunFolderError, match="in use by process 1 on some-other-host"):
        train(cfg, resume=tmp_path / "run")


def _register(name, images, labels, num_classes):
    def build(req):
        ds = ArrayDataset(images, np.zeros_like(labels), num_classes, req.train_transform)
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
    state = load_state(tmp_path / "run")
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "run" / ".lock").exists()


def test_nan_under_autocast_is_redone_in_fp32(tmp_path, monkeypatch, capsys):
    import vitlab.engine.losses as losses
    from vitlab.tasks import classification
    original = losses.classification_loss

    def flaky(*a, **k):
        loss = original(*a, **k)
        return loss * float("nan") if torch.is_autocast_enabled("cpu") else loss
    monkeypatch.setattr(classification, "classification_loss", flaky)
    result = train(micro_config(tmp_path / "run", amp={"dtype": "bf16"}, sched={"epochs": 1, "max_steps": 3}))
    assert result["step"] == 3 and "redoing the step in fp32" in capsys.readouterr().out
    assert all(np.isfinite(train_losses(tmp_path / "run")))
    assert load_state(tmp_path / "run")["engine"]["amp"] is None     # autocast stays off, also after --resume


def test_labels_out_of_range_give_a_clear_error(tmp_path):
    images = np.zeros((32, 16, 16), dtype=np.uint8)
    _register("test-badlabels", images, np.full(32, 7), 4)
    cfg = micro_config(tmp_path / "run", data={"name": "test-badlabels", "batch_size": 8, "options": {}})
    with pytest.raises(DataError, match=r"labels must be in \[0, 3\]"):
        train(cfg)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\] for 4 classes"):
        ArrayDataset(images, np.full(32, 7), 4)


def test_resume_refuses_another_class_count_model_or_batch(tmp_path):
    train(micro_config(tmp_path / "run", sched={"epochs": 1, "max_steps": 2}))
    images = np.zeros((32, 16, 16), dtype=np.uint8)
    _register("test-4cls", images, np.arange(32) % 4, 4)
    with pytest.raises(ConfigError, match="trained for 10 classes but the dataset has 4"):
        train(micro_config(tmp_path / "run", data={"name": "test-4cls", "options": {}}), resume=tmp_path / "run")
    with pytest.raises(ConfigError, match="trained model 'volo_micro'; it cannot continue as 'pale_micro'"):
        train(micro_config(tmp_path / "run", model={"name": "pale_micro", "kwargs": {}}), resume=tmp_path / "run")
    with pytest.raises(ConfigError, match="global batch was 16, now it would be 8"):
        train(micro_config(tmp_path / "run", data={"batch_size": 8}), resume=tmp_path / "run")
    (tmp_path / "run" / "last.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(RunFolderError, match="last.pth is not a readable training state"):
        train(micro_config(tmp_path / "run"), resume=tmp_path / "run")


def test_token_labels_and_mix_token_train_the_aux_head(tmp_path):
    maps = torch.rand(64, 10, 4, 4)
    torch.save(maps, tmp_path / "maps.pt")
    recipe = dict(data={"options": {"held_out": 200, "train_limit": 64}},
                  sched={"epochs": 1, "max_steps": 3}, aug={"scale": [1.0, 1.0], "hflip": 0.0, "mix_token": True,
                                                            "token_labels": str(tmp_path / "maps.pt")})
    result = train(micro_config(tmp_path / "run", **recipe))
    assert result["step"] == 3
    assert all(np.isfinite(train_losses(tmp_path / "run")))
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
    train(micro_config(tmp_path / "big", data={"batch_size": 16}, **common))
    train(micro_config(tmp_path / "acc", data={"batch_size": 8}, optim={"lr": 2e-3, "accum_steps": 2}, **common))
    assert len(train_losses(tmp_path / "acc")) == 4
    assert train_losses(tmp_path / "acc") == pytest.approx(train_losses(tmp_path / "big"), rel=1e-4)


def test_speed_and_memory_switches_run(tmp_path):
    """bf16 autocast, channels-last, gradient checkpointing, clipping and layer decay together."""
    cfg = micro_config(tmp_path / "run", amp={"dtype": "bf16"}, sched={"epochs": 1, "max_steps": 3},
                       model={"channels_last": True, "grad_checkpointing": True, "drop_path": 0.1},
                       optim={"clip_grad": 1.0, "layer_decay": 0.75, "lr": 2e-3})
    assert train(cfg)["step"] == 3
    assert all(np.isfinite(train_losses(tmp_path / "run")))


def test_train_limit_keeps_every_class(tmp_path):
    """A small train_limit used to keep the first N images of a class-sorted array (2 of 10 classes)."""
    train(micro_config(tmp_path / "run", data={"options": {"held_out": 200, "train_limit": 100}},
                       sched={"epochs": 1, "max_steps": 1}))
    data = read_metrics(tmp_path / "run")[0]
    assert data["kind"] == "data" and data["train"] == 100 and data["train_classes"] == 10


def test_a_short_run_still_draws_its_curves(tmp_path):
    """A run shorter than log_every has no train records: the per-epoch records are drawn instead."""
    from PIL import Image
    train(micro_config(tmp_path / "run", sched={"epochs": 2}, data={"options": {"held_out": 200, "train_limit": 64}},
                       run={"log_every": 1000, "plots": True}))
    kinds = {r["kind"] for r in read_metrics(tmp_path / "run")}
    assert "train" not in kinds and {"epoch", "eval"} <= kinds
    with Image.open(tmp_path / "run" / "curves.png") as im:
        assert im.size[0] > 1000 and np.asarray(im.convert("L")).std() > 10


@pytest.mark.slow
def test_torch_compile_switch(tmp_path):
    result = train(micro_config(tmp_path / "run", model={"compile": True}, sched={"epochs": 1, "max_steps": 2}))
    assert result["step"] == 2


def test_fine_tune_weights_keep_a_matching_classifier_and_replace_another(tmp_path):
    """model.pretrained: a resolution fine-tune continues the heads; another class count starts a new head."""
    from vitlab.tasks.classification import load_fine_tune_weights
    source = vitlab.create_model("volo_micro", num_classes=10)
    torch.save(source.state_dict(), tmp_path / "ten.pth")
    same = vitlab.create_model("volo_micro", num_classes=10)
    load_fine_tune_weights(same, tmp_path / "ten.pth")
    assert torch.equal(same.head.weight, source.head.weight) and torch.equal(same.aux_head.weight,
                                                                               source.aux_head.weight)
    other = vitlab.create_model("volo_micro", num_classes=5)
    fresh = other.head.weight.clone()
    load_fine_tune_weights(other, tmp_path / "ten.pth")
    assert torch.equal(other.head.weight, fresh) and torch.equal(other.network[0][0].attn.v.weight,
                                                                 source.network[0][0].attn.v.weight)

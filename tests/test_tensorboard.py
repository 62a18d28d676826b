"""``run.tensorboard``: event files under RUN/tensorboard/ that mirror metrics.jsonl, resume without duplicates,
the figures as images, and a one-line refusal when the tensorboard package is missing."""
from __future__ import annotations

import json
import shutil
import sys

import pytest

from vitlab.cli.main import main

# 8-image batches of 24 training digits: 3 steps an epoch, 2 epochs, stopping after 5 steps
ARGV = ["train", "--model", "volo_micro", "--data", "digits", "--img-size", "16", "--batch-size", "8",
        "--epochs", "2", "--max-steps", "5", "--log-every", "1", "--threads", "1", "--workers", "0",
        "--device", "cpu", "--progress", "log",
        "--set", "model.kwargs.patch_size=4", "--set", "model.kwargs.in_chans=1", "--set", "aug.crop_pct=1.0",
        "--set", "data.options.train_limit=24", "--set", "data.options.held_out=40",
        "--set", "data.eval_batch_size=40", "--set", "run.keep_every=1"]
TB = ["--set", "run.tensorboard=true"]


def _records(out, kind):
    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


def _events(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_mirrors_metrics_and_resumes_without_duplicates(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    assert main(ARGV + TB + ["-o", str(out)]) == 0, capsys.readouterr().err
    acc = _events(out)
    train = _records(out, "train")
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]
    for key in ("loss", "lr", "images_per_s"):
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train], key
    evals = _records(out, "eval")
    assert [e.step for e in acc.Scalars("eval/top1")] == [r["step"] for r in evals] == [3, 5]
    assert [e.value for e in acc.Scalars("eval/top1")] == pytest.approx([r["top1"] for r in evals], rel=1e-6)
    assert [e.step for e in acc.Scalars("epoch/train_loss")] == [3]
    images = acc.Tags()["images"]
    assert {"curves", "confusion"} <= set(images), images
    assert [i.step for i in acc.Images("confusion")] == [5] and acc.Images("confusion")[0].width > 0

    # a crash after step 5 whose last good checkpoint was step 3: the resumed run purges steps 4-5 and rewrites them
    shutil.copy(out / "checkpoint-0001.pth", out / "last.pth")
    assert main(["train", "--resume", str(out), "--set", "run.tensorboard=true", "--progress", "log"]) == 0, \
        capsys.readouterr().err
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2        # appended, same folder
    acc = _events(out)
    resumed = _records(out, "train")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in train]                  # bit-exact resume
    for key in ("loss", "images_per_s"):     # images_per_s differs between the runs: the new values win
        got = [(e.step, e.value) for e in acc.Scalars(f"train/{key}")]
        assert got == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in resumed], key
    assert [e.step for e in acc.Scalars("eval/top1")] == [r["step"] for r in _records(out, "eval")] == [3, 5]


def test_missing_tensorboard_is_refused_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)          # import tensorboard -> ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    out = tmp_path / "run"
    assert main(ARGV + TB + ["-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vitlab train: error: run.tensorboard")
    assert "pip install tensorboard" in err and "vitlab[tensorboard]" in err
    assert not out.exists() or not any(out.iterdir())               # nothing trained, nothing written


def test_tensorboard_off_by_default_writes_nothing(tmp_path, capsys):
    from vitlab.engine.schema import COMMON_SECTIONS
    assert COMMON_SECTIONS["run"]["tensorboard"].default is False
    out = tmp_path / "run"
    assert main(ARGV + ["--max-steps", "1", "--set", "run.plots=false", "-o", str(out)]) == 0, \
        capsys.readouterr().err
    assert not (out / "tensorboard").exists()


def test_figures_of_every_task_become_images(tmp_path):
    pytest.importorskip("tensorboard")
    import numpy as np
    from PIL import Image
    from vitlab.engine.tensorboard import TensorBoardLog
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(tmp_path / "curves.png")
    for folder, mode in (("overlays", "RGB"), ("predictions", "RGBA"), ("figures", "L")):
        (tmp_path / folder).mkdir()
        Image.new(mode, (6, 4)).save(tmp_path / folder / "val_0001.png")
    log = TensorBoardLog(tmp_path)
    log.write({"kind": "data", "step": 0, "task": "segmentation"})       # not a scalar record: ignored
    log.write({"kind": "eval", "epoch": 1, "step": 7, "mIoU": 12.5, "mode": "whole", "loss": float("nan")})
    assert log.add_figures(tmp_path, 7) == ["curves", "overlays/val_0001", "predictions/val_0001", "figures/val_0001"]
    log.close()
    acc = _events(tmp_path)
    assert acc.Tags()["scalars"] == ["eval/mIoU"] and acc.Scalars("eval/mIoU")[0].step == 7
    assert (acc.Images("overlays/val_0001")[0].width, acc.Images("overlays/val_0001")[0].height) == (6, 4)

"""Helpers shared by the training tests: a micro recipe on the built-in digits set (16 px, 1 channel)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from vitlab.engine.config import build_config

TIMING_KEYS = {"images_per_s", "train_minutes"}


def micro_config(output, **sections) -> dict:
    """volo_micro at 16 px on digits, a few dozen steps; ``sections`` override config sections."""
    base = {
        "model": {"name": "volo_micro", "kwargs": {"img_size": 16, "patch_size": 4, "in_chans": 1}},
        "data": {"name": "digits", "batch_size": 16, "eval_batch_size": 200,
                 "options": {"held_out": 200, "train_limit": 320}},
        "aug": {"scale": [0.6, 1.0], "crop_pct": 1.0},
        "optim": {"lr": 2e-3},
        "sched": {"epochs": 2, "warmup_epochs": 0.2},
        "run": {"output": str(output), "threads": 1, "log_every": 1, "plots": False, "progress": "log"},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return build_config(overrides=base)


def read_metrics(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines if x.strip()]


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return torch.load(Path(run_dir) / "last.pth", map_location="cpu", weights_only=True)["model"]


def test_micro_config_is_valid(tmp_path):
    cfg = micro_config(tmp_path, sched={"epochs": 3})
    assert cfg["sched"]["epochs"] == 3 and cfg["model"]["kwargs"]["img_size"] == 16

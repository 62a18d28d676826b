"""Helpers shared by the training tests: micro recipes of every task on built-in data, and readers of a run."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from vitlab.engine.config import dump_yaml
from vitlab.tasks import fit, make_config

TIMING_KEYS = {"images_per_s", "train_minutes", "minutes"}

# volo_micro at 16 px on digits, a few dozen steps
CLASSIFICATION = {
    "model": {"name": "volo_micro", "kwargs": {"img_size": 16, "patch_size": 4, "in_chans": 1}},
    "data": {"name": "digits", "batch_size": 16, "eval_batch_size": 200,
             "options": {"held_out": 200, "train_limit": 320}},
    "aug": {"scale": [0.6, 1.0], "crop_pct": 1.0},
    "optim": {"lr": 2e-3},
    "sched": {"epochs": 2, "warmup_epochs": 0.2},
    "run": {"threads": 1, "log_every": 1, "plots": False, "progress": "log"},
}


def merge(base: dict, **sections) -> dict:
    """``base`` with each section of ``sections`` updated (one level deep)."""
    out = copy.deepcopy(base)
    for key, value in sections.items():
        if isinstance(value, dict):
            out.setdefault(key, {}).update(copy.deepcopy(value))
        else:
            out[key] = value
    return out


def micro_config(output, task: str = "classification", base: dict | None = None, **sections) -> dict:
    """A checked run configuration: ``base`` (the micro classification recipe by default) <- ``sections``."""
    layer = merge(CLASSIFICATION if base is None else base, **sections)
    layer.setdefault("run", {})["output"] = str(output)
    return make_config(task, [("test", layer)])


def train(cfg: dict, **kwargs) -> dict:
    return fit(cfg, **kwargs)


def write_recipe(path: Path, cfg: dict) -> Path:
    path.write_text(dump_yaml(cfg))
    return path


def read_metrics(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in lines if x.strip()]


def train_losses(run_dir) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"]


def load_state(run_dir, name: str = "last.pth") -> dict:
    return torch.load(Path(run_dir) / name, map_location="cpu", weights_only=True)


def final_weights(run_dir) -> dict[str, torch.Tensor]:
    return load_state(run_dir)["model"]


def test_micro_config_is_valid(tmp_path):
    cfg = micro_config(tmp_path, sched={"epochs": 3})
    assert cfg["sched"]["epochs"] == 3 and cfg["model"]["kwargs"]["img_size"] == 16
    assert cfg["run"]["output"] == str(tmp_path) and cfg["task"] == "classification"

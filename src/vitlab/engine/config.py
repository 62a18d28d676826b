"""Run configuration: defaults, YAML files and command-line overrides.

A configuration is a nested dict with the sections below. ``vitlab train --config FILE`` reads a
YAML file holding any subset of them; explicit flags (``--epochs 5``) and ``--set a.b=value``
(value parsed as YAML) override it. The merged result is written to ``config.yaml`` in the run
folder and is enough to repeat the run (``vitlab train --config runs/x/config.yaml``).
"""
from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml


class _Loader(yaml.SafeLoader):
    """YAML 1.1's float rule misses ``3e-4`` (no dot); read such scalars as floats, as users mean them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)

DEFAULTS: dict[str, Any] = {
    "task": "classification",
    "model": {
        "name": "volo_micro",       # a variant or family name (vitlab models --families)
        "kwargs": {},               # passed to create_model (img_size, layers, patch_size, ...)
        "pretrained": None,         # a local checkpoint or model folder to start from
        "drop_path": None,          # drop_path_rate override
        "grad_checkpointing": False,
        "channels_last": False,
        "compile": False,           # torch.compile the model
        "sync_bn": True,            # SyncBatchNorm under DDP on GPUs (CUDA only; CPU ranks keep per-process statistics)
        "freeze_bn": False,         # replace BatchNorm by frozen (running-statistics) BatchNorm
    },
    "data": {
        "name": "animal-mnist",     # registered name, name:PATH, or an image-folder path
        "root": None,
        "img_size": None,           # default: the model's pretrained_cfg input size
        "batch_size": 64,           # per process; global batch = batch_size * world_size * accum_steps
        "eval_batch_size": 256,
        "workers": 0,
        "options": {},              # passed to the dataset builder (held_out, val_fraction, split_seed, ...)
    },
    "aug": {
        "scale": [0.08, 1.0], "ratio": [0.75, 1.3333333], "hflip": 0.5, "color_jitter": 0.0,
        "auto_augment": None,       # e.g. rand-m9-mstd0.5-inc1
        "reprob": 0.0, "remode": "pixel", "recount": 1, "interpolation": "bicubic",
        "crop_pct": None,           # eval crop; default: the model's pretrained_cfg
        "mixup": 0.0, "cutmix": 0.0, "mix_prob": 1.0, "switch_prob": 0.5,
        "smoothing": 0.1,
        "mix_token": False,         # VOLO/UniFormer MixToken (needs a model with an aux head)
        "token_labels": None,       # file with per-image dense score maps (N, K, h, w)
    },
    "loss": {
        "aux_weight": 0.5,          # weight of the dense aux-head loss (token labeling)
    },
    "optim": {
        "name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "betas": [0.9, 0.999], "eps": 1e-8,
        "layer_decay": None,        # e.g. 0.75: layer-wise LR decay
        "clip_grad": None,          # max gradient norm
        "accum_steps": 1,
    },
    "sched": {
        "epochs": 10, "warmup_epochs": 1.0, "warmup_lr": 1e-6, "min_lr": 1e-5,
        "max_steps": None,          # stop after this many optimizer steps (smoke tests)
    },
    "ema": {"enabled": False, "decay": 0.9998, "warmup": True},
    "amp": {"dtype": None},         # null | bf16 | fp16
    "run": {
        "output": None,             # default runs/<model>-<data>-<time>
        "seed": 0, "device": "auto", "threads": None,
        "log_every": 50,            # optimizer steps between log lines
        "checkpoint_every": 0,      # optimizer steps between mid-epoch 'last' checkpoints (0: epoch ends only)
        "eval_every": 1,            # epochs
        "progress": "auto",         # auto (a bar on a terminal) | bar | log
        "plots": True,
        "detect_anomaly": False,
    },
}


def deep_merge(base: dict, override: dict, path: str = "", free: bool = False) -> dict:
    """Merge ``override`` into a copy of ``base``; unknown keys are errors except in free-form sections."""
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        where = f"{path}{key}"
        sub_free = free or where in FREE_SECTIONS
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = deep_merge(out[key], value, where + ".", sub_free)
        elif key in out or free:
            out[key] = copy.deepcopy(value)
        else:
            known = ", ".join(sorted(out))
            raise ValueError(f"unknown config key {where!r}; known keys here: {known}")
    return out


FREE_SECTIONS = {"model.kwargs", "data.options"}


def parse_set(items: list[str] | None) -> dict:
    """``["optim.lr=3e-4", "model.kwargs.img_size=32"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key.path=value, got {item!r}")
        key, raw = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml_load(raw)
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    data = yaml_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a mapping of config sections, got {type(data).__name__}")
    return data


def build_config(file: str | Path | None = None, overrides: dict | None = None, base: dict | None = None) -> dict:
    """DEFAULTS <- ``base`` (task defaults) <- YAML file <- overrides."""
    cfg = deep_merge(DEFAULTS, base or {})
    if file:
        cfg = deep_merge(cfg, load_yaml(file))
    return deep_merge(cfg, overrides or {})


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=None)

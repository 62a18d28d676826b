"""Self-describing model folders: ``config.json`` (architecture, arguments, preprocessing) + ``model.safetensors``."""
from __future__ import annotations

import json
import os
from pathlib import Path

from torch import nn

from .atomic import atomic_save_safetensors, atomic_write_json

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1


def _jsonable(value, key: str):
    try:
        json.dumps(value)
    except TypeError as e:
        raise TypeError(f"model argument {key}={value!r} cannot be stored in {CONFIG_NAME}; "
                        f"build the model with JSON-serialisable arguments") from e
    return value


def save_pretrained(model: nn.Module, directory: str | os.PathLike, label_names: list[str] | None = None) -> Path:
    """Write a model folder that :func:`from_pretrained` (and ``vitlab eval/export``) can rebuild alone."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("save_pretrained needs a model built by vitlab.create_model (it records the architecture)")
    directory = Path(directory)
    kwargs = {k: _jsonable(v, k) for k, v in getattr(model, "model_kwargs", {}).items()}
    cfg = dict(getattr(model, "pretrained_cfg", {}))
    num_classes = getattr(model, "num_classes", cfg.get("num_classes"))
    if label_names is not None and num_classes is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label names for a model with {num_classes} classes")
    config = {
        "format_version": FORMAT_VERSION,
        "architecture": name,
        "kwargs": kwargs,
        "num_classes": num_classes,
        "num_features": getattr(model, "num_features", None),
        "preprocessing": {k: cfg[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation") if k in cfg},
        "label_names": list(label_names) if label_names is not None else None,
    }
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(model.state_dict(), directory / WEIGHTS_NAME, metadata={"architecture": name})
    atomic_write_json(directory / CONFIG_NAME, config)
    return directory


def read_config(directory: str | os.PathLike) -> dict:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a vitlab model folder: {CONFIG_NAME} is missing")
    config = json.loads(path.read_text())
    if "architecture" not in config:
        raise ValueError(f"{path} has no 'architecture' field; is it a vitlab model folder?")
    return config


def from_pretrained(directory: str | os.PathLike, **overrides) -> nn.Module:
    """Rebuild a model saved with ``save_pretrained`` and load its weights (strict)."""
    from vitlab.models.registry import create_model
    from .load import load_checkpoint
    config = read_config(directory)
    kwargs = {**config.get("kwargs", {}), **overrides}
    model = create_model(config["architecture"], **kwargs)
    load_checkpoint(model, Path(directory) / WEIGHTS_NAME, strict=True)
    pre = config.get("preprocessing") or {}
    if pre and hasattr(model, "pretrained_cfg"):
        model.pretrained_cfg = {**model.pretrained_cfg, **{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in pre.items()}}
    model.label_names = config.get("label_names")
    return model

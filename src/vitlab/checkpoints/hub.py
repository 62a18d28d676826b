"""Self-describing model folders: ``config.json`` (architecture, arguments, preprocessing) + ``model.safetensors``.

``config.json`` records the registered name and keyword arguments the model was built with, the
number of classes and their names, and the preprocessing that goes with the weights (input size,
mean/std, crop_pct, interpolation). Parameters shared between modules (tied weights) are stored
once and listed under ``tied_weights``; loading restores every name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
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


def split_tied(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Keep one name per shared tensor (safetensors refuses aliases); return (unique tensors, {alias: kept name})."""
    unique, tied, seen = {}, {}, {}
    for k, v in state_dict.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape), tuple(v.stride()), v.dtype) \
            if v.device.type != "meta" and v.numel() else None
        if key is not None and key in seen:
            tied[k] = seen[key]
        else:
            if key is not None:
                seen[key] = k
            unique[k] = v
    return unique, tied


def save_pretrained(model: nn.Module, directory: str | os.PathLike, label_names: list[str] | None = None,
                    dataset: dict | None = None) -> Path:
    """Write a model folder that :func:`from_pretrained` (and ``vitlab eval/export``) can rebuild alone.

    ``label_names`` default to ``model.label_names`` when the model carries them. ``dataset`` records how
    the training data was read (e.g. a segmentation set's ``reduce_zero_label``); it comes back as
    ``model.dataset_info``.
    """
    name = getattr(model, "model_name", None)
    if name is None:
        raise ValueError("save_pretrained needs a model built by vitlab.create_model (it records the architecture)")
    directory = Path(directory)
    kwargs = {k: _jsonable(v, k) for k, v in getattr(model, "model_kwargs", {}).items()}
    cfg = dict(getattr(model, "pretrained_cfg", {}))
    num_classes = getattr(model, "num_classes", cfg.get("num_classes"))
    if label_names is None:
        label_names = getattr(model, "label_names", None)
    if label_names is not None and num_classes is not None and len(label_names) != num_classes:
        raise ValueError(f"{len(label_names)} label names for a model with {num_classes} classes")
    tensors, tied = split_tied(model.state_dict())
    config = {
        "format_version": FORMAT_VERSION,
        "library": "vitlab",
        "library_version": _version(),
        "architecture": name,
        "kwargs": kwargs,
        "num_classes": num_classes,
        "num_features": getattr(model, "num_features", None),
        "preprocessing": {k: cfg[k] for k in ("input_size", "mean", "std", "crop_pct", "interpolation") if k in cfg},
        "label_names": list(label_names) if label_names is not None else None,
        "dataset": dict(dataset if dataset is not None else getattr(model, "dataset_info", None) or {}),
        "tied_weights": tied,
    }
    directory.mkdir(parents=True, exist_ok=True)
    atomic_save_safetensors(tensors, directory / WEIGHTS_NAME, metadata={"architecture": name})
    atomic_write_json(directory / CONFIG_NAME, config)
    return directory


def _version() -> str:
    from vitlab import __version__
    return __version__


RUN_MODEL_DIR = "model"   # where a training run keeps its model folder


def model_folder(directory: str | os.PathLike) -> Path:
    """The model folder of ``directory``: itself (``config.json`` + weights) or a run folder's ``model/``."""
    path = Path(directory)
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / RUN_MODEL_DIR / CONFIG_NAME).is_file():
        return path / RUN_MODEL_DIR
    if path.is_dir():
        raise FileNotFoundError(f"{path} is neither a vitlab model folder ({CONFIG_NAME} + {WEIGHTS_NAME}) nor a "
                                f"run folder with a finished {RUN_MODEL_DIR}/ (a run writes it when it ends)")
    raise FileNotFoundError(f"model folder {path} does not exist")


def read_config(directory: str | os.PathLike) -> dict:
    path = model_folder(directory) / CONFIG_NAME
    config = json.loads(path.read_text())
    if "architecture" not in config:
        raise ValueError(f"{path} has no 'architecture' field; is it a vitlab model folder?")
    return config


def from_pretrained(directory: str | os.PathLike, **overrides) -> nn.Module:
    """Rebuild a model saved with ``save_pretrained`` and load its weights (strict); returned in eval mode.

    ``directory`` is a model folder or a training run folder (its ``model/``). ``overrides`` go to
    ``create_model`` (e.g. ``img_size=384``: position tables are resized on load).
    """
    from vitlab.models.registry import create_model
    from .load import load_checkpoint, read_state_dict
    directory = model_folder(directory)
    config = read_config(directory)
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ValueError(f"{directory} was written by a newer vitlab (folder format {config['format_version']}, "
                         f"this one reads {FORMAT_VERSION}); upgrade vitlab")
    kwargs = {**config.get("kwargs", {}), **overrides}
    model = create_model(config["architecture"], **kwargs)
    num_classes = config.get("num_classes")
    if num_classes is not None and "num_classes" not in overrides and hasattr(model, "reset_classifier") \
            and getattr(model, "num_classes", num_classes) != num_classes:
        model.reset_classifier(num_classes)  # the head was replaced after building (fine-tuning)
    state_dict = read_state_dict(Path(directory) / WEIGHTS_NAME)
    for alias, source in (config.get("tied_weights") or {}).items():
        if source not in state_dict:
            raise ValueError(f"{directory}: tied weight {alias!r} refers to {source!r}, which the weights lack")
        state_dict[alias] = state_dict[source]
    load_checkpoint(model, state_dict, strict=True)
    pre = dict(config.get("preprocessing") or {})
    if {"img_size", "num_frames"} & set(overrides):
        pre.pop("input_size", None)  # rebuilt at another size: the model's own input_size applies
    if pre and hasattr(model, "pretrained_cfg"):
        model.pretrained_cfg = {**model.pretrained_cfg, **{k: tuple(v) if isinstance(v, list) else v
                                                            for k, v in pre.items()}}
    model.label_names = config.get("label_names")
    model.dataset_info = config.get("dataset") or {}
    return model.eval()


def load_model(spec: str | os.PathLike, checkpoint: str | os.PathLike | None = None, **overrides) -> nn.Module:
    """A model from a registered name, a model folder or a run folder, in eval mode.

    ``checkpoint`` loads other weights on top (strict). ``overrides`` go to ``create_model``.
    """
    from vitlab.models.registry import create_model
    from .load import load_checkpoint
    path = Path(spec)
    if not path.is_dir() and (os.sep in str(spec) or str(spec).startswith(".")):
        raise FileNotFoundError(f"{spec} does not exist (expected a model name, a model folder or a run folder)")
    model = from_pretrained(path, **overrides) if path.is_dir() else create_model(str(spec), **overrides)
    if checkpoint:
        load_checkpoint(model, checkpoint, strict=True)
    return model.eval()

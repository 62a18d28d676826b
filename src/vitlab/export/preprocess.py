"""The preprocessing an exported file expects, written next to it as ``<file>.preprocess.json``.

A served ONNX / TorchScript file takes a float tensor and nothing else; what has to happen to an image
before it (resize rule, crop, mean/std, channel order, value range) lives in the model's
``pretrained_cfg`` and is lost in the export. This file carries it, with the class names when the model
has them (a model folder's ``label_names``), the vitlab version and the model name. It is written
atomically (:func:`vitlab.checkpoints.atomic.atomic_write_json`).
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from vitlab.checkpoints.atomic import atomic_write_json

SCHEMA = "vitlab.preprocess/1"


def preprocess_path(path: str | Path) -> Path:
    """``model.onnx`` -> ``model.onnx.preprocess.json``."""
    path = Path(path)
    return path.with_name(f"{path.name}.preprocess.json")


def preprocess_config(model: nn.Module, input_shape, *, format: str, dynamic_batch: bool = False,
                      dynamic_hw: bool = False, stride: int | None = None, notes: list[str] | None = None) -> dict:
    """What an image must go through before it is fed to the exported ``model`` (a JSON-able dict)."""
    from vitlab import __version__
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    shape = [int(v) for v in input_shape]
    video = len(shape) == 5
    height, width = shape[-2], shape[-1]
    crop_pct = float(cfg.get("crop_pct", 0.875))
    interpolation = cfg.get("interpolation", "bicubic")
    side = max(height, width)
    labels = getattr(model, "label_names", None)
    config = {
        "schema": SCHEMA,
        "model": getattr(model, "model_name", type(model).__name__),
        "vitlab_version": __version__,
        "format": format,
        "input_name": "input",
        "input_layout": "NCTHW" if video else "NCHW",
        "input_shape": shape,
        "input_size": [height, width],
        "num_frames": shape[2] if video else None,
        "dynamic_batch": bool(dynamic_batch),
        "dynamic_hw": bool(dynamic_hw),
        "size_multiple": int(stride) if dynamic_hw and stride else None,
        "channel_order": "RGB",
        "value_range": [0.0, 1.0],
        "dtype": "float32",
        "mean": [float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406))],
        "std": [float(v) for v in cfg.get("std", (0.229, 0.224, 0.225))],
        "crop_pct": crop_pct,
        "interpolation": interpolation,
        "resize": {"rule": "resize the shorter side to floor(max(input_size) / crop_pct) keeping the aspect ratio "
                           f"({interpolation}), then centre-crop input_size",
                   "shorter_side": int(side // crop_pct) if crop_pct else side,
                   "crop": [height, width]},
        "normalize": "x = (pixels / 255 - mean) / std, per channel, after the resize and crop",
        "class_names": list(labels) if labels is not None else None,
        "num_classes": getattr(model, "num_classes", cfg.get("num_classes")),
        "task": cfg.get("task", "classification"),
    }
    if notes:
        config["notes"] = list(notes)
    return config


def write_preprocess(model: nn.Module, path: str | Path, input_shape, **kwargs) -> Path:
    """Write :func:`preprocess_config` next to the exported file ``path``; return where."""
    target = preprocess_path(path)
    atomic_write_json(target, preprocess_config(model, input_shape, **kwargs))
    return target

"""``vitlab info``: architecture summary of a model: family, parameters, preprocessing, feature maps."""
from __future__ import annotations

import argparse
import os

from vitlab.checkpoints.atomic import to_json
from vitlab.cli.common import MODEL_HELP, add_flags

COMMAND = "info"
HELP = "show a model's family, parameter count, preprocessing config and feature maps"


def add_arguments(p):
    p.add_argument("model", help=MODEL_HELP)
    add_flags(p, "img_size", "json", img_size={"help": "build for this input side in pixels"})
    p.add_argument("--img", dest="img_size", type=int, help=argparse.SUPPRESS)  # older spelling


def describe(model) -> dict:
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "name": getattr(model, "model_name", type(model).__name__),
        "class": type(model).__name__,
        "params": params,
        "trainable_params": trainable,
        "num_features": getattr(model, "num_features", None),
        "num_classes": getattr(model, "num_classes", None),
        "pretrained_cfg": getattr(model, "pretrained_cfg", {}),
        "feature_info": getattr(model, "feature_info", []),
        "kwargs": getattr(model, "model_kwargs", {}),
    }


def build(spec: str, img_size: int | None = None):
    """A model folder or run folder is loaded; a registered name is built on the meta device (no weights needed)."""
    overrides = {"img_size": img_size} if img_size else {}
    if os.path.isdir(spec):
        from vitlab.cli.common import load_model
        return load_model(spec, **overrides)
    from vitlab.models.registry import build_without_weights
    return build_without_weights(spec, **overrides)


def run(args) -> int:
    info = describe(build(args.model, args.img_size))
    if args.json:
        print(to_json(info, indent=2, default=str))
        return 0
    cfg = info["pretrained_cfg"]
    print(f"{info['name']}  ({info['class']})")
    print(f"  params          {info['params'] / 1e6:.2f} M")
    print(f"  num_features    {info['num_features']}   num_classes {info['num_classes']}")
    if cfg:
        print(f"  input_size      {tuple(cfg.get('input_size', ()))}   crop_pct {cfg.get('crop_pct')}   "
              f"interpolation {cfg.get('interpolation')}")
        print(f"  mean / std      {tuple(cfg.get('mean', ()))} / {tuple(cfg.get('std', ()))}")
    for i, f in enumerate(info["feature_info"]):
        print(f"  feature {i}       {f['channels']} channels, stride {f['reduction']}, module {f['module']}")
    return 0

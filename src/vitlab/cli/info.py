"""``vitlab info``: architecture summary of a model: family, parameters, preprocessing, feature maps."""
from __future__ import annotations

import json

COMMAND = "info"
HELP = "show a model's family, parameter count, preprocessing config and feature maps"


def add_arguments(p):
    p.add_argument("model", help="variant name or model folder")
    p.add_argument("--img", type=int, default=None, help="build for this input size")
    p.add_argument("--json", action="store_true", help="print JSON")


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


def run(args) -> int:
    import os

    import vitlab
    from vitlab.models.registry import build_without_weights
    if os.path.isdir(args.model):
        model = vitlab.from_pretrained(args.model)
    else:
        model = build_without_weights(args.model, **({"img_size": args.img} if args.img else {}))
    info = describe(model)
    if args.json:
        print(json.dumps(info, indent=2, default=str))
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

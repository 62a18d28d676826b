"""``vitlab train|eval --task segmentation``: the generic run configuration mapped onto the segmentation loop."""
from __future__ import annotations

import json
import math
from pathlib import Path

from vitlab.data.registry import register_task


def to_segmentation_config(config: dict) -> dict:
    """Translate the sectioned run configuration (model/data/optim/sched/run) into :data:`train.DEFAULTS` keys."""
    model, data, optim = config.get("model", {}), config.get("data", {}), config.get("optim", {})
    sched, run, opts = config.get("sched", {}), config.get("run", {}), dict(data.get("options") or {})
    cfg = {"model": model.get("name", "segvit_micro"), "model_kwargs": dict(model.get("kwargs") or {}),
           "backbone_weights": model.get("pretrained"), "data": data.get("name", "texture-scenes"),
           "data_root": data.get("root"), "batch_size": data.get("batch_size", 8), "workers": data.get("workers", 0),
           "lr": optim.get("lr", 1e-3), "weight_decay": optim.get("weight_decay", 0.01),
           "grad_clip": optim.get("clip_grad") or 1.0, "seed": run.get("seed", 0), "threads": run.get("threads"),
           "out": run.get("output") or f"runs/{model.get('name', 'segvit_micro')}-segmentation"}
    if sched.get("max_steps"):
        cfg["iters"] = sched["max_steps"]
    elif sched.get("epochs"):
        cfg["epochs"] = sched["epochs"]
    if data.get("img_size"):
        cfg["crop_size"] = data["img_size"]
    for key in ("reduce_zero_label", "num_classes", "crop_size", "mode", "stride", "head_lr_mult", "warmup_iters",
                "eval_interval", "overlays", "scale"):
        if key in opts:
            cfg[key] = opts[key]
    return cfg


def train_task(config: dict) -> int:
    from vitlab.segmentation.metrics import format_table
    from vitlab.segmentation.train import train
    result = train(to_segmentation_config(config), progress=run_progress(config))
    print(format_table(result))
    return 0


def evaluate_task(config: dict) -> int:
    """Evaluate ``model.pretrained`` (a model folder, or a checkpoint for ``model.name``) on the validation split."""
    import vitlab
    from vitlab.segmentation.metrics import format_table
    from vitlab.segmentation.train import build_datasets, evaluate
    cfg = {**to_segmentation_config(config), "ratio_range": (1, 1), "scale": None}
    source = config.get("model", {}).get("pretrained")
    if source and Path(source).is_dir():
        model = vitlab.from_pretrained(source)
    else:
        model = vitlab.create_model(cfg["model"], **cfg["model_kwargs"])
        if source:
            vitlab.load_checkpoint(model, source, strict=True)
    cfg.setdefault("num_classes", model.num_classes)
    cfg.setdefault("crop_size", 64)
    _, val = build_datasets(cfg, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    result = evaluate(model.eval(), val, cfg.get("mode"), cfg["crop_size"] if cfg.get("mode") == "slide" else None,
                      cfg.get("stride"))
    print(format_table(result))
    print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()
                      if k != "per_class"}))
    return 0


def run_progress(config: dict) -> bool:
    return config.get("run", {}).get("progress", "auto") != "log"


register_task("segmentation", train=train_task, evaluate=evaluate_task,
              defaults={"model": {"name": "segvit_micro"}, "data": {"name": "texture-scenes", "batch_size": 8},
                        "optim": {"lr": 1e-3, "weight_decay": 0.01}},
              help="semantic segmentation (SegViT / UperNet / Semantic FPN) on ADE20K-layout folders or "
                   "texture-scenes; data.options: reduce_zero_label, num_classes, crop_size, mode, stride")

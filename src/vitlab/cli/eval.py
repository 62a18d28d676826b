"""``vitlab eval``: top-1/top-5, per-class accuracy, confusion matrix and images/s of a classifier.

``--model`` is a model name (then ``--checkpoint`` gives the weights), a model folder
(``config.json`` + ``model.safetensors``, as ``save_pretrained`` writes), or a ``vitlab train``
run folder (its ``model/`` and its data settings are used).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

COMMAND = "eval"
HELP = "evaluate a classifier: top-1/top-5, per-class accuracy, confusion matrix, images/s"


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model name, model folder, or training run folder")
    p.add_argument("--checkpoint", help="weights (.pth/.pth.tar/.safetensors/.bin or a folder); training "
                                        "checkpoints (last.pth/best.pth) work too")
    p.add_argument("--data", help="dataset (as for vitlab train); default: the run's dataset")
    p.add_argument("--task", default="classification", help="classification or a registered task")
    p.add_argument("--config", help="YAML recipe to take data/model settings from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    p.add_argument("--img-size", type=int)
    p.add_argument("--crop-pct", type=float)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--amp", choices=["bf16", "fp16"])
    p.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")
    p.add_argument("--threads", type=int)
    p.add_argument("--output", help="folder for eval.json and confusion.png")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true")


def _config(args) -> tuple[dict, Path | None]:
    from vitlab.engine.config import build_config, deep_merge, load_yaml, parse_set
    model_arg = Path(args.model)
    run_cfg, model_dir = None, None
    if model_arg.is_dir():
        if (model_arg / "config.yaml").is_file() and (model_arg / "model" / "config.json").is_file():
            run_cfg, model_dir = load_yaml(model_arg / "config.yaml"), model_arg / "model"
        elif (model_arg / "config.json").is_file():
            model_dir = model_arg
        else:
            raise FileNotFoundError(f"--model {model_arg} is a folder but neither a model folder (config.json + "
                                    f"model.safetensors) nor a vitlab run folder (config.yaml + model/)")
    cfg = build_config(args.config, run_cfg or {})
    over: dict = {"data": {}, "aug": {}, "run": {"device": args.device}, "amp": {"dtype": args.amp}}
    if model_dir is None:
        over["model"] = {"name": args.model}
    if args.data:
        over["data"]["name"] = args.data
    if args.img_size:
        over["data"]["img_size"] = args.img_size
    if args.batch_size:
        over["data"]["eval_batch_size"] = args.batch_size
    if args.workers is not None:
        over["data"]["workers"] = args.workers
    if args.crop_pct:
        over["aug"]["crop_pct"] = args.crop_pct
    if args.threads:
        over["run"]["threads"] = args.threads
    cfg = deep_merge(cfg, deep_merge(over, parse_set(args.set), free=True))
    return cfg, model_dir


def head_classes(state_dict: dict) -> int | None:
    for key in ("head.weight", "fc.weight", "classifier.weight", "head.fc.weight"):
        if key in state_dict and state_dict[key].ndim == 2:
            return int(state_dict[key].shape[0])
    return None


def evaluate_model(args) -> dict:
    import torch

    import vitlab
    from vitlab.checkpoints.load import read_state_dict
    from vitlab.engine.builders import build_data, eval_loader, resolve_device, set_threads
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.evaluate import evaluate
    cfg, model_dir = _config(args)
    set_threads(cfg["run"].get("threads"))
    dist_info = DistInfo()
    device = resolve_device(cfg["run"]["device"], dist_info)
    if model_dir is not None:
        model = vitlab.from_pretrained(model_dir)
        name = model.model_name
        bundle, _ = build_data({**cfg, "model": {**cfg["model"], "name": name, "kwargs": model.model_kwargs}},
                               splits=("val",), pretrained_cfg=model.pretrained_cfg)
        if model.num_classes != bundle.num_classes:
            raise ValueError(f"the model in {model_dir} has {model.num_classes} classes but dataset "
                             f"{cfg['data']['name']!r} has {bundle.num_classes}")
    else:
        bundle, resolved = build_data(cfg, splits=("val",))
        model = vitlab.create_model(cfg["model"]["name"], num_classes=bundle.num_classes, **resolved["model_kwargs"])
    if args.checkpoint:
        state = read_state_dict(args.checkpoint, use_ema=args.use_ema)
        n = head_classes(state)
        if n is not None and n != bundle.num_classes:
            raise ValueError(f"checkpoint {args.checkpoint} has a classifier for {n} classes but dataset "
                             f"{cfg['data']['name']!r} has {bundle.num_classes} classes")
        vitlab.load_checkpoint(model, state, strict=True)
    elif model_dir is None:
        print("warning: no --checkpoint given; evaluating randomly initialised weights", file=sys.stderr)
    if bundle.val is None or len(bundle.val) == 0:
        raise ValueError(f"dataset {cfg['data']['name']!r} has no evaluation images")
    model.to(device).eval()
    loader = eval_loader(bundle.val, int(cfg["data"]["eval_batch_size"]), int(cfg["data"]["workers"]), dist_info)
    with torch.inference_mode():
        res = evaluate(model, loader, bundle.num_classes, device, bundle.predict, cfg["amp"]["dtype"], dist_info)
    res["model"] = getattr(model, "model_name", cfg["model"]["name"])
    res["data"] = cfg["data"]["name"]
    res["class_names"] = list(bundle.class_names)
    return res


def run(args) -> int:
    from vitlab.data.registry import get_task
    entry = get_task(args.task)
    if entry.evaluate is not None:
        cfg, _ = _config(args)
        cfg["task"] = args.task
        return int(entry.evaluate(cfg) or 0)
    res = evaluate_model(args)
    if args.output:
        from vitlab.checkpoints.atomic import atomic_write_json
        from vitlab.engine.plots import plot_confusion
        import numpy as np
        out = Path(args.output)
        atomic_write_json(out / "eval.json", res)
        plot_confusion(np.array(res["confusion"]), res["class_names"], out / "confusion.png",
                       f"{res['model']} on {res['data']}: top-1 {res['top1']:.2f}%")
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['model']} on {res['data']}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
          f"loss {res['loss']:.4f}  {res['count']} images  {res['images_per_s']:.0f} images/s"
          + (f"  ({res['skipped']} unreadable images skipped)" if res["skipped"] else ""))
    width = max(len(c) for c in res["class_names"])
    print("per-class accuracy:")
    for name, acc in zip(res["class_names"], res["per_class"]):
        print(f"  {name:<{width}}  {acc:6.2f}%")
    if len(res["class_names"]) <= 20:
        print("confusion matrix (rows: true, columns: predicted):")
        for name, row in zip(res["class_names"], res["confusion"]):
            print(f"  {name:<{width}}  " + " ".join(f"{v:5d}" for v in row))
    return 0

"""``vitlab eval``: top-1/top-5, per-class accuracy, confusion matrix and images/s of a classifier (images or clips).

``--model`` is a registered name (then ``--checkpoint`` gives the weights), a model folder
(``config.json`` + ``model.safetensors``, as ``save_pretrained`` writes) or a ``vitlab train`` run folder
(its ``model/`` and its data settings). ``--data PATH`` given explicitly evaluates the whole folder
(unless it holds a ``val/`` split). Runs under torchrun too: each process scores its shard.
"""
from __future__ import annotations

import sys
from pathlib import Path

from .common import add_flags, set_threads

COMMAND = "eval"
HELP = "evaluate a classifier: top-1/top-5, per-class accuracy, confusion matrix, images/s"


def add_arguments(p) -> None:
    add_flags(p, "model", "checkpoint", "data", "config", "set", "img_size", "batch_size", "workers", "device",
              "amp", "threads", "output", "overwrite", "json", model={"required": True})
    p.add_argument("--task", choices=("classification", "video"), help="default: the run's task, else classification")
    p.add_argument("--crop-pct", type=float, help="evaluation crop (default: the model's)")
    p.add_argument("--use-ema", action="store_true", help="evaluate the EMA weights of a training checkpoint")


def _run_config(model_arg: Path) -> tuple[dict, Path | None]:
    """(the run's config.yaml, the model folder) of a run folder or model folder; ({}, None) for a name."""
    from vitlab.checkpoints.hub import model_folder
    from vitlab.engine.config import load_yaml
    if not model_arg.is_dir():
        if "/" in str(model_arg) or str(model_arg).startswith("."):
            raise FileNotFoundError(f"{model_arg} does not exist (expected a model name, a model folder or a run folder)")
        return {}, None
    folder = model_folder(model_arg)
    run_cfg = model_arg / "config.yaml" if folder != model_arg else None
    return (load_yaml(run_cfg) if run_cfg is not None and run_cfg.is_file() else {}), folder


def resolve(args) -> tuple[dict, Path | None]:
    """The evaluation config: the run's recipe <- the recipe file <- the flags <- --set."""
    from vitlab.engine.config import load_yaml, parse_set, put
    from vitlab.tasks import make_config
    saved, folder = _run_config(Path(args.model))
    task = args.task or saved.get("task") or "classification"
    if task not in ("classification", "video"):
        hint = "vitlab segment eval" if task == "segmentation" else "vitlab knn"
        raise ValueError(f"{args.model} is a {task} run: evaluate it with `{hint} {args.model}`")
    flags: dict = {}
    for dest, key in (("data", "data.name"), ("img_size", "data.img_size"), ("batch_size", "data.eval_batch_size"),
                      ("workers", "data.workers"), ("crop_pct", "aug.crop_pct"), ("threads", "run.threads"),
                      ("device", "run.device"), ("amp", "amp.dtype")):
        if getattr(args, dest, None) is not None:
            put(flags, key, getattr(args, dest))
    if folder is None:
        put(flags, "model.name", args.model)
    if args.data:  # a folder named here is evaluated whole (its own val/ split, when it has one, is used)
        put(flags, "data.options.eval_whole_folder", True)
    layers = [("the run's config.yaml", {k: v for k, v in saved.items() if k != "run"})] if saved else []
    if args.config:
        layers.append((args.config, load_yaml(args.config)))
    layers += [("the command line", flags), ("--set", parse_set(args.set))]
    return make_config(task, layers), folder


def evaluate_model(args) -> dict:
    import torch

    import vitlab
    from vitlab.checkpoints.load import read_state_dict
    from vitlab.engine.distributed import cleanup, init_distributed
    from vitlab.engine.evaluate import evaluate
    from vitlab.engine.loaders import eval_loader
    from vitlab.engine.runtime import resolve_device
    from vitlab.tasks.classification import build_image_data
    cfg, folder = resolve(args)
    set_threads(cfg["run"]["threads"])
    dist = init_distributed(cfg["run"]["device"])
    try:
        device = resolve_device(cfg["run"]["device"], dist)
        if folder is not None:
            model = vitlab.from_pretrained(folder)
            cfg["model"].update(name=model.model_name, kwargs=dict(model.model_kwargs))
            bundle, _ = build_image_data(cfg, splits=("val",), pretrained_cfg=model.pretrained_cfg)
            if model.num_classes != bundle.num_classes:
                raise ValueError(f"the model in {folder} has {model.num_classes} classes but dataset "
                                 f"{cfg['data']['name']!r} has {bundle.num_classes}")
        else:
            bundle, resolved = build_image_data(cfg, splits=("val",))
            kwargs = {k: v for k, v in resolved["model_kwargs"].items() if k != "num_classes"}
            model = vitlab.create_model(cfg["model"]["name"], num_classes=bundle.num_classes, **kwargs)
        if args.checkpoint:
            state = read_state_dict(args.checkpoint, use_ema=args.use_ema)
            n = next((int(state[k].shape[0]) for k in ("head.weight", "fc.weight", "classifier.weight", "head.fc.weight")
                      if k in state and state[k].ndim == 2), None)
            if n is not None and n != bundle.num_classes:
                raise ValueError(f"checkpoint {args.checkpoint} has a classifier for {n} classes but dataset "
                                 f"{cfg['data']['name']!r} has {bundle.num_classes} classes")
            vitlab.load_checkpoint(model, state, strict=True)
        elif folder is None:
            print("warning: no --checkpoint given; evaluating randomly initialised weights", file=sys.stderr)
        if bundle.val is None or len(bundle.val) == 0:
            raise ValueError(f"dataset {cfg['data']['name']!r} has no evaluation images")
        model.to(device).eval()
        loader = eval_loader(bundle.val, batch_size=cfg["data"]["eval_batch_size"], workers=cfg["data"]["workers"],
                             dist=dist, pin_memory=device.type == "cuda")
        with torch.inference_mode():
            res = evaluate(model, loader, bundle.num_classes, device, bundle.predict, cfg["amp"]["dtype"], dist)
        res.update(model=getattr(model, "model_name", cfg["model"]["name"]), data=cfg["data"]["name"],
                   class_names=list(bundle.class_names), source=bundle.info.get("val_source"), is_main=dist.is_main)
        return res
    finally:
        cleanup(dist)


def _print_report(res: dict) -> None:
    print(f"{res['model']} on {res['data']}: top-1 {res['top1']:.2f}%  top-5 {res['top5']:.2f}%  "
          f"loss {res['loss']:.4f}  {res['count']} images  {res['images_per_s']:.0f} images/s"
          + (f"  ({res['skipped']} unreadable images skipped)" if res["skipped"] else ""))
    if res.get("source"):
        print(f"evaluated: {res['source']}")
    for name in res.get("skipped_files", [])[:10]:
        print(f"  skipped {name}")
    width = max(len(c) for c in res["class_names"])
    print("per-class accuracy:")
    for name, acc in zip(res["class_names"], res["per_class"]):
        print(f"  {name:<{width}}  {acc:6.2f}%")
    if len(res["class_names"]) <= 20:
        print("confusion matrix (rows: true, columns: predicted):")
        for name, row in zip(res["class_names"], res["confusion"]):
            print(f"  {name:<{width}}  " + " ".join(f"{v:5d}" for v in row))


def run(args) -> int:
    import numpy as np

    from vitlab.checkpoints.atomic import atomic_write_json, to_json
    from vitlab.engine.plots import plot_confusion
    from vitlab.engine.run_folder import claim_run_folder
    res = evaluate_model(args)
    if not res.pop("is_main"):
        return 0
    if args.output:
        with claim_run_folder(args.output, overwrite=args.overwrite, resumable=False) as folder:
            atomic_write_json(folder.path / "eval.json", res)
            plot_confusion(np.array(res["confusion"]), res["class_names"], folder.path / "confusion.png",
                           f"{res['model']} on {res['data']}: top-1 {res['top1']:.2f}%")
    if args.json:
        print(to_json(res, indent=2))
    else:
        _print_report(res)
    return 0

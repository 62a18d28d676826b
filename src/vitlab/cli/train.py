"""``vitlab train``: train a classifier (or another registered task) from a YAML recipe plus overrides."""
from __future__ import annotations

import sys
import time
from pathlib import Path

COMMAND = "train"
HELP = "train a model (YAML config + command-line overrides; torchrun for DDP)"

# flag -> config path
FLAGS = {
    "model": "model.name", "data": "data.name", "epochs": "sched.epochs", "batch_size": "data.batch_size",
    "lr": "optim.lr", "weight_decay": "optim.weight_decay", "img_size": "data.img_size", "output": "run.output",
    "seed": "run.seed", "device": "run.device", "amp": "amp.dtype", "workers": "data.workers",
    "accum_steps": "optim.accum_steps", "clip_grad": "optim.clip_grad", "layer_decay": "optim.layer_decay",
    "drop_path": "model.drop_path", "mixup": "aug.mixup", "cutmix": "aug.cutmix", "smoothing": "aug.smoothing",
    "aa": "aug.auto_augment", "reprob": "aug.reprob", "max_steps": "sched.max_steps", "threads": "run.threads",
    "progress": "run.progress", "pretrained": "model.pretrained", "checkpoint_every": "run.checkpoint_every",
    "log_every": "run.log_every", "warmup_epochs": "sched.warmup_epochs",
}
SWITCHES = {"ema": "ema.enabled", "channels_last": "model.channels_last", "compile": "model.compile",
            "grad_checkpointing": "model.grad_checkpointing", "mix_token": "aug.mix_token"}


def add_arguments(p) -> None:
    p.add_argument("--config", help="YAML recipe (any subset of the config sections)")
    p.add_argument("--task", default=None, help="classification (default), or a task another module registered "
                                                "(video, segmentation, ...)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run exactly from RUN_DIR/last.pth")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="override any config key, e.g. --set optim.betas=[0.9,0.95] (value parsed as YAML)")
    p.add_argument("--model", help="model name (vitlab models)")
    p.add_argument("--data", help="dataset: animal-mnist, digits, folder:PATH, a folder path, or a registered name")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, help="per-process batch size")
    p.add_argument("--lr", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--img-size", type=int)
    p.add_argument("--output", help="run folder (default runs/<model>-<data>-<time>)")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", choices=["bf16", "fp16"])
    p.add_argument("--workers", type=int)
    p.add_argument("--accum-steps", type=int)
    p.add_argument("--clip-grad", type=float)
    p.add_argument("--layer-decay", type=float)
    p.add_argument("--drop-path", type=float)
    p.add_argument("--mixup", type=float)
    p.add_argument("--cutmix", type=float)
    p.add_argument("--smoothing", type=float)
    p.add_argument("--aa", help="RandAugment string, e.g. rand-m9-mstd0.5-inc1")
    p.add_argument("--reprob", type=float, help="random erasing probability")
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--checkpoint-every", type=int, help="also save last.pth every N optimizer steps")
    p.add_argument("--log-every", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--progress", choices=["auto", "bar", "log"])
    p.add_argument("--pretrained", help="initialise from a local checkpoint or model folder (classifier dropped)")
    for name in SWITCHES:
        p.add_argument(f"--{name.replace('_', '-')}", action="store_true", default=None)
    p.add_argument("--json", action="store_true", help="print the final result as JSON")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def overrides_from_args(args) -> dict:
    from vitlab.engine.config import parse_set
    out: dict = {}

    def put(path: str, value) -> None:
        node = out
        keys = path.split(".")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value

    for flag, path in FLAGS.items():
        value = getattr(args, flag, None)
        if value is not None:
            put(path, value)
    for flag, path in SWITCHES.items():
        if getattr(args, flag, None):
            put(path, True)
    if getattr(args, "task", None):
        out["task"] = args.task
    from vitlab.engine.config import deep_merge
    return deep_merge(out, parse_set(args.set), free=True)


def resolve_config(args) -> dict:
    """Merge defaults, the task's defaults, the YAML file (or the resumed run's config.yaml) and the flags."""
    from vitlab.data.registry import get_task
    from vitlab.engine.config import build_config, load_yaml
    overrides = overrides_from_args(args)
    config_file = args.config
    if args.resume:
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.yaml there (is it a vitlab run folder?)")
        config_file = saved
        overrides.setdefault("run", {})["output"] = str(Path(args.resume))
    task = overrides.get("task") or (load_yaml(config_file).get("task") if config_file else None) or "classification"
    cfg = build_config(config_file, overrides, base=get_task(task).defaults)
    cfg["task"] = task
    if not cfg["run"]["output"]:
        data = str(cfg["data"]["name"]).replace("/", "_").replace(":", "_").strip("_")[-40:]
        cfg["run"]["output"] = f"runs/{cfg['model']['name']}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg


def run(args) -> int:
    import json

    from vitlab.data.registry import get_task
    from vitlab.engine.trainer import TrainingDiverged, train
    cfg = resolve_config(args)
    entry = get_task(cfg["task"])
    if entry.train is not None:
        return int(entry.train(cfg) or 0)
    try:
        result = train(cfg, resume=args.resume)
    except TrainingDiverged as e:
        print(f"vitlab train: {e}", file=sys.stderr)
        return 3
    if result.get("top1") is None:
        return 0
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "per_class"}, indent=2))
    else:
        print(f"held-out top-1: {result['top1']:.2f}%  top-5: {result['top5']:.2f}%  "
              f"({result['count']} images, {result['train_minutes']:.1f} min)  -> {result['output']}")
    return 0

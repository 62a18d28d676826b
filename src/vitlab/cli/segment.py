"""``vitlab segment train|eval|data``: semantic segmentation on ADE20K-layout folders or the built-in set."""
from __future__ import annotations

import json
import math

COMMAND = "segment"
HELP = "semantic segmentation: train / evaluate (mIoU) / write the built-in texture-scenes set"


def _data_args(p) -> None:
    p.add_argument("--data", default="texture-scenes",
                   help="'texture-scenes' (built in, generated on first use) or an ADE20K-layout folder")
    p.add_argument("--data-root", default=None, help="where the built-in set is written (default: ~/.cache/vitlab)")
    p.add_argument("--num-classes", type=int, default=None, help="needed for folders without dataset.json")
    p.add_argument("--reduce-zero-label", action=__import__("argparse").BooleanOptionalAction, default=None,
                   help="label 0 is 'other' -> ignored, c -> c-1 (ADE20K; default on for the built-in set)")
    p.add_argument("--mode", choices=("whole", "slide"), default=None, help="inference mode (default: model's)")
    p.add_argument("--crop-size", type=int, default=None, help="training crop / sliding-window size (64)")
    p.add_argument("--stride", type=int, default=None, help="sliding-window stride")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show tracebacks")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    from vitlab.segmentation.train import DEFAULTS
    t = sub.add_parser("train", help="train a segmentor; writes config.yaml, metrics.jsonl, model/, eval.json")
    opt = lambda name, kind, text: t.add_argument(  # noqa: E731  (unset options fall back to the YAML / defaults)
        f"--{name.replace('_', '-')}", type=kind, default=None, help=f"{text} (default {DEFAULTS[name]})")
    opt("model", str, "model name")
    opt("out", str, "run folder")
    opt("iters", int, "training iterations")
    opt("batch_size", int, "batch size")
    opt("lr", float, "peak learning rate (AdamW, warm-up then poly decay)")
    opt("head_lr_mult", float, "decode-head lr multiplier (SegViT uses 10 with a pretrained backbone)")
    opt("weight_decay", float, "weight decay")
    opt("warmup_iters", int, "linear warm-up iterations")
    opt("eval_interval", int, "evaluate and checkpoint every N iterations")
    opt("overlays", int, "validation overlays saved at the end")
    opt("backbone_weights", str, "backbone checkpoint (timm or mmseg ViT layout)")
    opt("seed", int, "seed of initialisation, data order and augmentation")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from last.pth")
    t.add_argument("--config", default=None, help="YAML file with any of these options (command line wins)")
    _data_args(t)
    e = sub.add_parser("eval", help="mIoU / mAcc / aAcc and a per-class IoU table")
    e.add_argument("model", help="a model folder written by 'segment train' (…/model) or a model name")
    e.add_argument("--checkpoint", default=None, help="weights for a model given by name (mmseg .pth works)")
    e.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale test ratios")
    e.add_argument("--flip", action="store_true", help="average with the horizontally flipped input")
    e.add_argument("--overlays", type=int, default=0, help="save this many overlay PNGs into --out")
    e.add_argument("--out", default=None, help="folder for eval.json and overlays")
    e.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    _data_args(e)
    d = sub.add_parser("data", help="write the built-in texture-scenes set (ADE20K layout)")
    d.add_argument("out")
    d.add_argument("--train", type=int, default=400)
    d.add_argument("--val", type=int, default=100)
    d.add_argument("--size", type=int, default=128)
    d.add_argument("--seed", type=int, default=0)


def _print(result: dict, as_json: bool) -> None:
    from vitlab.segmentation.metrics import format_table
    if as_json:
        print(json.dumps(result, indent=2, default=lambda v: None if isinstance(v, float) and math.isnan(v) else v))
    else:
        print(format_table(result))


def run(args) -> int:
    import torch
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
    if args.action == "data":
        from vitlab.data.synthetic_scenes import write_texture_scenes
        root = write_texture_scenes(args.out, args.train, args.val, args.size, args.seed)
        print(f"wrote {args.train} training and {args.val} validation scenes to {root}")
        return 0
    if args.action == "train":
        return _train(args)
    return _eval(args)


def _train(args) -> int:
    import yaml

    from vitlab.segmentation.train import DEFAULTS, train
    cfg = {}
    if args.config:
        with open(args.config) as f:
            cfg = yaml.safe_load(f) or {}
        unknown = sorted(set(cfg) - set(DEFAULTS))
        if unknown:
            raise ValueError(f"{args.config}: unknown option(s) {unknown}; known: {sorted(DEFAULTS)}")
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k, None) is not None}
    if args.data == "texture-scenes" and "data" in cfg:
        given.pop("data")  # the parser's default does not override the file
    if not args.resume:
        given.pop("resume", None)
    result = train({**cfg, **given}, progress=not args.json)
    _print(result, args.json)
    return 0


def _eval(args) -> int:
    from pathlib import Path

    import vitlab
    from vitlab.checkpoints.atomic import atomic_write_json
    from vitlab.segmentation.train import build_datasets, evaluate
    if Path(args.model).is_dir():
        model = vitlab.from_pretrained(args.model)
    else:
        model = vitlab.create_model(args.model, **({"num_classes": args.num_classes} if args.num_classes else {}))
        if args.checkpoint:
            print(vitlab.load_checkpoint(model, args.checkpoint, strict=True))
    model.eval()
    cfg = {"data": args.data, "data_root": args.data_root, "reduce_zero_label": args.reduce_zero_label,
           "num_classes": args.num_classes or model.num_classes, "crop_size": args.crop_size or 64, "ratio_range": (1, 1),
           "seed": 0, "scale": None}
    _, val = build_datasets(cfg, model.pretrained_cfg["mean"], model.pretrained_cfg["std"])
    if val.num_classes != model.num_classes:
        raise ValueError(f"the model predicts {model.num_classes} classes, the data has {val.num_classes}")
    crop = (args.crop_size or 64) if args.mode == "slide" else None
    result = evaluate(model, val, args.mode, crop, args.stride, tuple(args.scales), args.flip,
                      overlay_dir=Path(args.out) / "overlays" if args.out else None,
                      num_overlays=args.overlays if args.out else 0, limit=args.limit)
    if args.out:
        atomic_write_json(Path(args.out) / "eval.json", result)
    _print(result, args.json)
    return 0

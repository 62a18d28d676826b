"""``vitlab segment train|eval|data``: semantic segmentation on ADE20K-layout folders or the built-in set.

``segment train`` is ``vitlab train --task segmentation`` with the segmentation flags; ``segment eval``
scores a run folder (its ``model/`` and its data settings: classes, ``reduce_zero_label``, crop size),
a model folder or a model name with ``--checkpoint``.
"""
from __future__ import annotations

import argparse

from .common import add_flags, run_config, set_threads, train_and_report
from .train import RUN_FLAGS, RUN_SWITCHES, add_run_flags

COMMAND = "segment"
HELP = "semantic segmentation: train / evaluate (mIoU) / write the built-in texture-scenes set"

FLAGS = {
    **RUN_FLAGS, "head_lr_mult": "optim.lr_mult.decode_head", "warmup_steps": "sched.warmup_steps",
    "eval_interval": "run.eval_every_steps", "overlays": "seg.overlays", "backbone_weights": "seg.backbone_weights",
    "data_root": "seg.data_root", "num_classes": "seg.num_classes", "reduce_zero_label": "seg.reduce_zero_label",
    "mode": "seg.mode", "crop_size": "seg.crop_size", "stride": "seg.stride",
}
SWITCHES = dict(RUN_SWITCHES)


def _data_args(p, with_data: bool = True) -> None:
    if with_data:
        add_flags(p, "data", data={"help": "'texture-scenes' (built in, generated on first use) or an ADE20K-layout "
                                          "folder"})
    p.add_argument("--data-root", help="where the built-in set is written (default: ~/.cache/vitlab)")
    p.add_argument("--num-classes", type=int, help="needed for folders without dataset.json")
    p.add_argument("--reduce-zero-label", action=argparse.BooleanOptionalAction, default=None,
                   help="label 0 is 'other' -> ignored, c -> c-1 (ADE20K; default: dataset.json's value)")
    p.add_argument("--mode", choices=("whole", "slide"), help="inference mode (default: the model's)")
    p.add_argument("--crop-size", "--img-size", dest="crop_size", type=int, help="training crop / sliding window")
    p.add_argument("--stride", type=int, help="sliding-window stride")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a segmentor; writes config.yaml, metrics.jsonl, model/, eval.json")
    add_run_flags(t)
    _data_args(t, with_data=False)
    t.add_argument("--iters", dest="steps", type=int, help=argparse.SUPPRESS)   # mmseg's name for --steps
    t.add_argument("--out", dest="output", help=argparse.SUPPRESS)
    t.add_argument("--head-lr-mult", type=float, help="decode-head lr multiplier (SegViT uses 10 with a pretrained "
                                                      "backbone)")
    t.add_argument("--warmup-steps", "--warmup-iters", dest="warmup_steps", type=int, help="linear warm-up steps")
    t.add_argument("--eval-interval", type=int, metavar="STEPS", help="evaluate (and checkpoint) every N steps")
    t.add_argument("--overlays", type=int, help="validation overlays written at the end")
    t.add_argument("--backbone-weights", metavar="FILE", help="backbone checkpoint (timm or mmseg ViT layout)")
    e = sub.add_parser("eval", help="mIoU / mAcc / aAcc and a per-class IoU table")
    e.add_argument("model", help="a segment-train run folder, a model folder, or a model name (with --checkpoint)")
    add_flags(e, "checkpoint", "output", "overwrite", "device", "threads", "json", "amp")
    e.add_argument("--scales", type=float, nargs="+", help="multi-scale test ratios")
    e.add_argument("--flip", action="store_true", default=None, help="average with the horizontally flipped input")
    e.add_argument("--overlays", type=int, default=0, help="write this many overlay PNGs into --output")
    e.add_argument("--limit", type=int, help="evaluate only the first N images")
    _data_args(e)
    d = sub.add_parser("data", help="write the built-in texture-scenes set (ADE20K layout)")
    d.add_argument("out")
    d.add_argument("--train", type=int, default=400)
    d.add_argument("--val", type=int, default=100)
    d.add_argument("--size", type=int, default=128)
    d.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    set_threads(getattr(args, "threads", None))
    if args.action == "data":
        from vitlab.data.synthetic_scenes import write_texture_scenes
        root = write_texture_scenes(args.out, args.train, args.val, args.size, args.seed)
        print(f"wrote {args.train} training and {args.val} validation scenes to {root}")
        return 0
    if args.action == "train":
        return train_and_report(run_config(args, task="segmentation", flags=FLAGS, switches=SWITCHES), args)
    return evaluate(args)


def _eval_config(args, model) -> dict:
    """The segmentation config of the model's run (when there is one), the folder's data facts, then the flags."""
    from pathlib import Path

    from vitlab.engine.config import load_yaml, put
    from vitlab.tasks import make_config
    layers = []
    run_cfg = Path(args.model) / "config.yaml"
    if run_cfg.is_file():
        saved = load_yaml(run_cfg)
        layers.append((str(run_cfg), {k: v for k, v in saved.items() if k in ("task", "data", "seg")}))
    info = getattr(model, "dataset_info", None) or {}
    facts = {"seg": {k: info[k] for k in ("reduce_zero_label", "ignore_index") if k in info}}
    layers.append((f"{args.model}/model/config.json", facts))
    flags: dict = {}
    for dest, key in (("data", "data.name"), ("data_root", "seg.data_root"), ("num_classes", "seg.num_classes"),
                      ("reduce_zero_label", "seg.reduce_zero_label"), ("mode", "seg.mode"),
                      ("crop_size", "seg.crop_size"), ("stride", "seg.stride"), ("scales", "seg.test_scales"),
                      ("flip", "seg.test_flip"), ("limit", "seg.eval_limit"), ("device", "run.device"),
                      ("amp", "amp.dtype")):
        if getattr(args, dest, None) is not None:
            put(flags, key, getattr(args, dest))
    layers.append(("the command line", flags))
    cfg = make_config("segmentation", layers)
    if cfg["seg"]["num_classes"] is None:
        cfg["seg"]["num_classes"] = model.num_classes
    return cfg


def evaluate(args) -> int:
    """``segment eval``: score a segmentor on the validation split; eval.json / overlays with ``--output``."""
    import sys
    from pathlib import Path

    from vitlab.checkpoints.atomic import atomic_write_json, to_json
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.run_folder import claim_run_folder
    from vitlab.engine.runtime import resolve_device
    from vitlab.segmentation.metrics import format_table
    from vitlab.tasks.segmentation import evaluate_segmentation, segmentation_sets, write_overlays
    from .common import load_model
    model = load_model(args.model, args.checkpoint)
    if not Path(args.model).is_dir() and not args.checkpoint:
        print("warning: no --checkpoint given; evaluating randomly initialised weights", file=sys.stderr)
    cfg = _eval_config(args, model)
    device = resolve_device(cfg["run"]["device"], DistInfo())
    pre = model.pretrained_cfg
    _, val = segmentation_sets(cfg, pre["mean"], pre["std"], train=False)
    if val.num_classes != model.num_classes:
        raise ValueError(f"the model predicts {model.num_classes} classes, the data has {val.num_classes}")
    model.to(device)
    result = evaluate_segmentation(model, val, cfg["seg"], device, DistInfo(), cfg["amp"]["dtype"])
    if args.output:
        with claim_run_folder(args.output, overwrite=args.overwrite, resumable=False) as folder:
            atomic_write_json(folder.path / "eval.json", result)
            if args.overlays:
                write_overlays(model, val, cfg["seg"], device, folder.path / "overlays", args.overlays,
                               f"{getattr(model, 'model_name', args.model)}")
    print(to_json(result, indent=2) if args.json else format_table(result))
    return 0

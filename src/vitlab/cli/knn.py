"""``vitlab knn``: weighted k-NN accuracy (cosine, k=20, T=0.07) of frozen features on a labelled set's held-out
split (bank = the training split), for a pretraining run, a checkpoint (teacher by default), a random
initialisation, or raw pixels. Runs on the GPU when there is one, and under torchrun (features in parallel)."""
from __future__ import annotations

import argparse

from .common import add_flags, set_threads

COMMAND = "knn"
HELP = "k-NN evaluation of frozen (self-supervised) features"


def add_evaluator_flags(p) -> None:
    """What ``knn`` and ``linear-probe`` share."""
    add_flags(p, "model", "checkpoint", "img_size", "batch_size", "workers", "device", "threads", "seed", "json",
              model={"help": "a pretraining run folder, a model folder, or a model name (with --checkpoint, or "
                             "alone for a random initialisation)"},
              checkpoint={"help": "last.pth of a pretraining run or an official EsViT checkpoint"})
    p.add_argument("-c", dest="checkpoint", help=argparse.SUPPRESS)
    add_flags(p, "data", data={"default": "animal-mnist"})
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    p.add_argument("--model-kwargs", default="{}", metavar="JSON", help="backbone constructor overrides")
    p.add_argument("--held-out", type=int, help="held-out images of a built-in set")


def backbone_from_args(args):
    import json

    from vitlab.ssl.evaluation import load_backbone
    if not args.checkpoint and not args.model:
        raise ValueError("give --model (a run or model folder, or a name) and/or --checkpoint")
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as e:
        raise ValueError(f"--model-kwargs is not valid JSON: {e}") from None
    return load_backbone(args.model, args.checkpoint, args.which, kwargs, args.img_size, seed=args.seed or 0)


def add_arguments(p) -> None:
    add_evaluator_flags(p)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--features", choices=("pooled", "last4"), default="pooled",
                   help="pooled final tokens (EsViT's k-NN feature) or the last 4 blocks' pooled outputs")
    p.add_argument("--baselines", action="store_true",
                   help="also report raw pixels, mean-centred raw pixels and the same network at random init")


def _rows(args, info, context) -> list[dict]:
    from vitlab.ssl.evaluation import eval_datasets, load_backbone
    from vitlab.ssl.knn import knn_accuracy, knn_evaluate, raw_pixel_features
    options = {"held_out": args.held_out} if args.held_out else {}
    bank, queries, classes = eval_datasets(args.data, info, options, args.seed or 0)
    common = dict(k=args.k, temperature=args.temperature, mode=args.features, num_classes=len(classes), **context)
    rows = [{"features": f"{info.source} [{args.features}]", **knn_evaluate(info.backbone, bank, queries, **common)}]
    if args.baselines:
        name = getattr(info.backbone, "model_name", None)
        kwargs = {k: v for k, v in getattr(info.backbone, "model_kwargs", {}).items() if k != "drop_path_rate"}
        random = load_backbone(name, None, model_kwargs=kwargs, img_size=info.img_size, in_chans=info.in_chans,
                               seed=args.seed or 0)
        random.backbone.to(context["device"])
        rows.append({"features": f"{name} at random init [{args.features}]",
                     **knn_evaluate(random.backbone, bank, queries, **common)})
        pixel_bank, pixel_queries, _ = eval_datasets(args.data, info, options, args.seed or 0, pixels=True)
        fb, yb = raw_pixel_features(pixel_bank)
        for center in (False, True):
            fq, yq = raw_pixel_features(pixel_queries, center, reference=fb)
            rows.append({"features": f"raw pixels{' (mean-centred)' if center else ''} @{info.img_size}px",
                         **knn_accuracy(fb - fb.mean(0, keepdim=True) if center else fb, yb, fq, yq, args.k,
                                        args.temperature, len(classes)), "bank": len(fb), "queries": len(fq)})
    return rows


def run(args) -> int:
    from vitlab.checkpoints.atomic import to_json
    from vitlab.engine.distributed import cleanup, init_distributed
    from vitlab.engine.runtime import resolve_device
    set_threads(args.threads)
    dist = init_distributed(args.device or "auto")
    try:
        device = resolve_device(args.device or "auto", dist)
        info = backbone_from_args(args)
        info.backbone.to(device)
        context = dict(device=device, dist=dist, batch_size=args.batch_size or 256, workers=args.workers or 0)
        rows = _rows(args, info, context)
    finally:
        cleanup(dist)
    if not dist.is_main:
        return 0
    if args.json:
        print(to_json(rows, indent=1))
        return 0
    print(f"k-NN on {args.data}: bank {rows[0]['bank']}, queries {rows[0]['queries']}, k={args.k}, T={args.temperature}")
    for r in rows:
        top5 = f"  top-5 {r['top5']:.2f}%" if "top5" in r else ""
        print(f"  {r['features']:<60} top-1 {r['top1']:.2f}%{top5}")
    return 0

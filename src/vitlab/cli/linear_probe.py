"""``vitlab linear-probe``: a linear classifier on the frozen backbone's concatenated average-pooled outputs of its
last 4 blocks (EsViT's linear evaluation), trained on the labelled training split, scored on the held-out split."""
from __future__ import annotations

from .common import set_threads
from .knn import add_evaluator_flags, backbone_from_args

COMMAND = "linear-probe"
HELP = "linear evaluation of frozen (self-supervised) features"


def add_arguments(p) -> None:
    add_evaluator_flags(p)
    p.add_argument("--features", choices=("last4", "pooled"), default="last4")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--weight-decay", type=float, default=1e-4)


def run(args) -> int:
    from vitlab.checkpoints.atomic import to_json
    from vitlab.engine.distributed import cleanup, init_distributed
    from vitlab.engine.runtime import resolve_device
    from vitlab.ssl.evaluation import eval_datasets
    from vitlab.ssl.knn import extract_features
    from vitlab.ssl.linear_probe import train_linear_probe
    set_threads(args.threads)
    dist = init_distributed(args.device or "auto")
    try:
        device = resolve_device(args.device or "auto", dist)
        info = backbone_from_args(args)
        info.backbone.to(device)
        bank, queries, _ = eval_datasets(args.data, info, {"held_out": args.held_out} if args.held_out else {},
                                         args.seed or 0)
        common = dict(device=device, dist=dist, batch_size=args.batch_size or 256, workers=args.workers or 0,
                      mode=args.features)
        (xtr, ytr, _), (xte, yte, _) = extract_features(info.backbone, bank, **common), \
            extract_features(info.backbone, queries, **common)
        result = train_linear_probe(xtr, ytr, xte, yte, args.epochs, args.lr, args.weight_decay, seed=args.seed or 0)
    finally:
        cleanup(dist)
    if not dist.is_main:
        return 0
    result.pop("classifier")
    result.update({"features": f"{args.features} ({xtr.shape[1]}-d)", "source": info.source,
                   "train_images": len(xtr), "test_images": len(xte)})
    if args.json:
        print(to_json(result))
    else:
        print(f"linear probe on {args.data} [{result['features']}] from {info.source}: top-1 {result['top1']:.2f}% "
              f"(train {result['train_top1']:.2f}%, {args.epochs} epochs, {len(xtr)} / {len(xte)} images)")
    return 0

"""``vitlab dense-probe``: a per-token linear classifier on the frozen final-stage map, trained on the training
scenes' masks and scored by mIoU on the held-out scenes (the region-level counterpart of ``knn`` and
``linear-probe``); ``--baselines`` adds the same network at random initialisation and raw pixels."""
from __future__ import annotations

from .common import set_threads
from .knn import add_evaluator_flags, backbone_from_args

COMMAND = "dense-probe"
HELP = "dense linear probe (mIoU) of frozen features on segmentation scenes"


def add_arguments(p) -> None:
    add_evaluator_flags(p)
    p.set_defaults(data="texture-scenes")
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--baselines", action="store_true", help="also probe random init and raw pixels")


def run(args) -> int:
    from vitlab.checkpoints.atomic import to_json
    from vitlab.data.registry import parse_data_spec
    from vitlab.data.synthetic_scenes import ensure_texture_scenes
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.runtime import resolve_device
    from vitlab.errors import DataError
    from vitlab.ssl.dense_probe import dense_probe_scenes
    from vitlab.ssl.evaluation import baseline_backbones
    set_threads(args.threads)
    name, root = parse_data_spec(args.data)
    if name != "texture-scenes":
        raise DataError(f"--data {args.data!r}: the dense probe reads segmentation scenes: texture-scenes[:PATH]")
    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    root = ensure_texture_scenes(root)
    device = resolve_device(args.device or "auto", DistInfo())
    info = backbone_from_args(args)
    models = [(info.source, info.backbone)] + (baseline_backbones(info, args.seed or 0) if args.baselines else [])
    rows = []
    for label, backbone in models:
        res = dense_probe_scenes(backbone.to(device), root, size=info.img_size, mean=info.mean, std=info.std,
                                 device=device, epochs=args.epochs, seed=args.seed or 0)
        res.pop("probe")
        rows.append({"features": label, **res})
    if args.json:
        print(to_json(rows, indent=1))
        return 0
    print(f"dense probe on {args.data}: {rows[0]['train']} training / {rows[0]['val']} held-out scenes at "
          f"{info.img_size} px, {rows[0]['grid']} tokens, {args.epochs} epochs")
    for r in rows:
        print(f"  {r['features']:<60} mIoU {r['mIoU']:6.2f}  mAcc {r['mAcc']:6.2f}  aAcc {r['aAcc']:6.2f}  "
              f"({r['channels']}-d)")
    return 0

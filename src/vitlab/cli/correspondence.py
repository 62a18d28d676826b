"""``vitlab correspondence``: how well final-stage tokens of two augmented views of one image find each other
(EsViT's correspondence analysis): accuracy of the best cosine match against the true token known from the
crops' geometry, within one token, and the distance error in pixels; on the texture scenes also how often the
match lands on the right texture and what matching by texture alone would score; with ``--baselines`` the same
network at random initialisation and raw pixels beside it."""
from __future__ import annotations

from .common import set_threads
from .knn import add_evaluator_flags, backbone_from_args

COMMAND = "correspondence"
HELP = "region correspondence accuracy of frozen features (two views, known geometry)"


def add_arguments(p) -> None:
    add_evaluator_flags(p)
    p.add_argument("--pairs", type=int, default=400,
                   help="pairs of views of the held-out images (pair i shows image i mod N, so more pairs than "
                        "images draw new views of them)")
    p.add_argument("--no-photometric", action="store_true",
                   help="crops and flips only (no colour jitter, blur, solarisation)")
    p.add_argument("--baselines", action="store_true", help="also score random init and raw pixels")


def run(args) -> int:
    from vitlab.checkpoints.atomic import to_json
    from vitlab.data.registry import DataRequest, build_dataset, parse_data_spec
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.runtime import resolve_device
    from vitlab.ssl.correspondence import evaluate_correspondence
    from vitlab.ssl.evaluation import baseline_backbones
    set_threads(args.threads)
    if args.pairs < 1:
        raise ValueError(f"--pairs must be at least 1, got {args.pairs}")
    device = resolve_device(args.device or "auto", DistInfo())
    info = backbone_from_args(args)
    name, root = parse_data_spec(args.data)
    options = {"held_out": args.held_out} if args.held_out else {}
    bundle = build_dataset(DataRequest(name, root=root, seed=args.seed or 0, splits=("val",), options=options))
    images, label_maps = bundle.val, None
    if name == "texture-scenes":                                   # exact masks: the region-level scores too
        from vitlab.data.synthetic_scenes import read_split_arrays
        label_maps = read_split_arrays(bundle.info["root"], "validation")[1]
    models = [(info.source, info.backbone)] + (baseline_backbones(info, args.seed or 0) if args.baselines else [])
    rows = []
    for label, backbone in models:
        res = evaluate_correspondence(backbone.to(device), images, mean=info.mean, std=info.std,
                                      in_chans=info.in_chans, view_size=info.img_size, pairs=args.pairs,
                                      seed=args.seed or 0, photometric=not args.no_photometric, device=device,
                                      batch_size=args.batch_size or 64, label_maps=label_maps)
        rows.append({"features": label, **res})
    if args.json:
        print(to_json(rows, indent=1))
        return 0
    r0 = rows[0]
    print(f"correspondence on {args.data}: {r0['pairs']} pairs of {info.img_size} px views of {r0['images']} images, "
          f"{r0['grid']} tokens, "
          f"{r0['tokens']} scored tokens (chance {r0['chance']:.2f}%"
          + (f", texture-only oracle {r0['label_oracle']:.2f}%)" if "label_oracle" in r0 else ")"))
    for r in rows:
        print(f"  {r['features']:<60} exact {r['exact']:6.2f}%  within one {r['within_one']:6.2f}%  "
              f"distance {r['distance_px']:6.2f} px"
              + (f"  same texture {r['same_region']:6.2f}%" if "same_region" in r else ""))
    return 0

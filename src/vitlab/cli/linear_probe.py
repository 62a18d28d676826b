"""``vitlab linear-probe``: a linear classifier on the frozen backbone's concatenated average-pooled
outputs of its last 4 blocks (EsViT's linear evaluation), trained on the labelled split."""
from __future__ import annotations

import json

COMMAND = "linear-probe"
HELP = "linear evaluation of frozen (self-supervised) features"


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", "-c", help="checkpoint.pth from 'vitlab pretrain' or an official EsViT file")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    p.add_argument("--model", help="backbone name (needed for checkpoints that do not record it)")
    p.add_argument("--model-kwargs", default="{}")
    p.add_argument("--data", default="animal-mnist")
    p.add_argument("--img-size", type=int)
    p.add_argument("--held-out", type=int, default=2000)
    p.add_argument("--features", choices=("last4", "pooled"), default="last4")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    import torch
    from vitlab.checkpoints.load import CheckpointError
    from vitlab.ssl.data import load_image_set
    from vitlab.ssl.evaluation import load_backbone
    from vitlab.ssl.knn import extract_features
    from vitlab.ssl.linear_probe import train_linear_probe
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.checkpoint and not args.model:
        print("error: give --checkpoint (or --model for a randomly initialised network)")
        return 2
    try:
        data = load_image_set(args.data, size=args.img_size, held_out=args.held_out, seed=args.seed)
        if data.labels is None:
            print(f"error: {args.data} has no labels (a linear probe needs one sub-folder per class)")
            return 2
        info = load_backbone(args.checkpoint, args.which, args.model, json.loads(args.model_kwargs), args.img_size,
                             data.channels, args.seed)
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    feats = [extract_features(info.backbone, data.images[idx], info.img_size, info.mean, info.std, mode=args.features)
             for idx in (data.train_idx, data.held_out_idx)]
    result = train_linear_probe(feats[0], data.labels[data.train_idx], feats[1], data.labels[data.held_out_idx],
                                args.epochs, args.lr, args.weight_decay, seed=args.seed)
    result.pop("classifier")
    result.update({"features": f"{args.features} ({feats[0].shape[1]}-d)", "source": info.source})
    if args.json:
        print(json.dumps(result))
    else:
        print(f"linear probe on {data.name} [{result['features']}] from {info.source}: "
              f"top-1 {result['top1']:.2f}% (train {result['train_top1']:.2f}%, {args.epochs} epochs)")
    return 0

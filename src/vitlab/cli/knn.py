"""``vitlab knn``: weighted k-NN accuracy of frozen features (cosine, k=20, T=0.07 by default) on a
labelled set's held-out split, for a pretraining checkpoint (teacher by default), a randomly
initialised network, or raw pixels."""
from __future__ import annotations

import json

COMMAND = "knn"
HELP = "k-NN evaluation of frozen (self-supervised) features"


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", "-c", help="checkpoint.pth from 'vitlab pretrain' or an official EsViT file")
    p.add_argument("--which", choices=("teacher", "student"), default="teacher")
    p.add_argument("--model", help="backbone name (needed for checkpoints that do not record it)")
    p.add_argument("--model-kwargs", default="{}", help="JSON backbone overrides")
    p.add_argument("--data", default="animal-mnist", help="labelled image folder or built-in set")
    p.add_argument("--img-size", type=int, help="evaluation size (default: the pretraining crop size)")
    p.add_argument("--held-out", type=int, default=2000)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--temperature", type=float, default=0.07)
    p.add_argument("--features", choices=("pooled", "last4"), default="pooled",
                   help="pooled final tokens (EsViT's k-NN feature) or the last 4 blocks' pooled outputs")
    p.add_argument("--baselines", action="store_true",
                   help="also report raw pixels, mean-centred raw pixels and the same network at random init")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    import torch
    from vitlab.checkpoints.load import CheckpointError
    from vitlab.ssl.data import load_image_set
    from vitlab.ssl.evaluation import load_backbone
    from vitlab.ssl.knn import extract_features, knn_accuracy, raw_pixel_features
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.checkpoint and not args.model and not args.baselines:
        print("error: give --checkpoint, or --model for a randomly initialised network, or --baselines")
        return 2
    try:
        kwargs = json.loads(args.model_kwargs)
        data = load_image_set(args.data, size=args.img_size, held_out=args.held_out, seed=args.seed)
        if data.labels is None:
            print(f"error: {args.data} has no labels (k-NN needs one sub-folder per class)")
            return 2
        rows = []
        bank_img, query_img = data.images[data.train_idx], data.images[data.held_out_idx]
        bank_y, query_y = data.labels[data.train_idx], data.labels[data.held_out_idx]
        infos = []
        if args.checkpoint or args.model:
            infos.append(load_backbone(args.checkpoint, args.which, args.model, kwargs, args.img_size,
                                       data.channels, args.seed))
        if args.baselines and infos and args.checkpoint:
            ref = infos[0]
            random = load_backbone(None, model=args.model or _model_name(args.checkpoint), model_kwargs={
                **_model_kwargs(args.checkpoint), **kwargs}, img_size=ref.img_size, in_chans=ref.in_chans,
                seed=args.seed)
            random.mean, random.std = ref.mean, ref.std
            infos.append(random)
        for info in infos:
            fb = extract_features(info.backbone, bank_img, info.img_size, info.mean, info.std, mode=args.features)
            fq = extract_features(info.backbone, query_img, info.img_size, info.mean, info.std, mode=args.features)
            rows.append({"features": f"{info.source} [{args.features}]", **knn_accuracy(fb, bank_y, fq, query_y, args.k, args.temperature)})
        if args.baselines:
            size = infos[0].img_size if infos else (args.img_size or bank_img.shape[-1])
            for center in (False, True):
                fb = raw_pixel_features(bank_img, size, center)
                fq = raw_pixel_features(query_img, size, center, reference=bank_img)
                rows.append({"features": f"raw pixels{' (mean-centred)' if center else ''} @{size}px",
                             **knn_accuracy(fb, bank_y, fq, query_y, args.k, args.temperature)})
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}")
        return 2
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(f"k-NN on {data.name}: bank {len(bank_img)}, queries {len(query_img)}, k={args.k}, T={args.temperature}")
        for r in rows:
            top5 = f"  top-5 {r['top5']:.2f}%" if "top5" in r else ""
            print(f"  {r['features']:<60} top-1 {r['top1']:.2f}%{top5}")
    return 0


def _ckpt_args(path):
    from vitlab.checkpoints.load import read_checkpoint_object
    obj = read_checkpoint_object(path)
    return obj.get("args", {}) if isinstance(obj, dict) else {}


def _model_name(path):
    name = _ckpt_args(path).get("model")
    if not name:
        raise ValueError("pass --model: the checkpoint does not record its model")
    return name


def _model_kwargs(path):
    return _ckpt_args(path).get("model_kwargs", {})

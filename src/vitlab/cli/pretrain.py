"""``vitlab pretrain``: EsViT self-supervised pretraining (view + region loss) on an image folder or a
built-in set; works on one CPU and under ``torchrun --nproc_per_node N -m vitlab pretrain ...``."""
from __future__ import annotations

import argparse
import json

COMMAND = "pretrain"
HELP = "self-supervised EsViT/DINO pretraining of a Swin backbone (no labels needed)"


def _pair(text: str) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers like 0.4,1.0, got {text!r}")
    return a, b


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=("paper", "small"), default="paper",
                   help="default settings: 'paper' (EsViT/DINO, ImageNet scale) or 'small' (small low-resolution "
                        "data sets: 32-px global crops, no local crops, K=1024, higher LR, faster teacher); "
                        "explicit flags still win")
    p.add_argument("--model", default="swin_micro", help="backbone name (swin_tiny, swin_micro, ...)")
    p.add_argument("--model-kwargs", default="{}", help="JSON overrides for the backbone, e.g. '{\"patch_size\": 4}'")
    p.add_argument("--data", default="animal-mnist", help="image folder (sub-folders = classes, optional) or "
                   "a built-in set: animal-mnist, digits")
    p.add_argument("--output", "-o", default="runs/pretrain", help="output folder (checkpoint.pth, metrics.jsonl)")
    p.add_argument("--resume", action="store_true", help="continue exactly from OUTPUT/checkpoint.pth")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=64, help="per process")
    p.add_argument("--lr", type=float, default=5e-4, help="peak LR at a total batch of 256 (scaled linearly)")
    p.add_argument("--min-lr", type=float, default=1e-6)
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--weight-decay", type=float, default=0.04)
    p.add_argument("--weight-decay-end", type=float, default=0.4)
    p.add_argument("--momentum-teacher", type=float, default=0.996)
    p.add_argument("--momentum-teacher-end", type=float, default=1.0,
                   help="final teacher momentum of the cosine schedule (1 in the paper)")
    p.add_argument("--out-dim", type=int, default=65536, help="DINO head output dimension K")
    p.add_argument("--head-hidden-dim", type=int, default=2048)
    p.add_argument("--head-bottleneck-dim", type=int, default=256)
    p.add_argument("--no-norm-last-layer", dest="norm_last_layer", action="store_false")
    p.add_argument("--use-bn-in-head", action="store_true", help="BatchNorm in the heads' MLP (DINO's option)")
    p.add_argument("--warmup-teacher-temp", type=float, default=0.04)
    p.add_argument("--teacher-temp", type=float, default=0.07)
    p.add_argument("--warmup-teacher-temp-epochs", type=int, default=0)
    p.add_argument("--student-temp", type=float, default=0.1)
    p.add_argument("--centering", choices=("ema", "sinkhorn"), default="ema",
                   help="teacher targets: 'ema' centring + sharpening (DINO / EsViT) or 'sinkhorn' (SwAV / DINOv2)")
    p.add_argument("--freeze-last-layer", type=int, default=1, help="epochs with the heads' last layer frozen")
    p.add_argument("--clip-grad", type=float, default=3.0, help="per-parameter gradient-norm clip (0 = off)")
    p.add_argument("--loss", choices=("view", "view+region"), default="view+region")
    p.add_argument("--global-size", type=int, default=224)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--n-local", type=int, default=8, help="number of local crops")
    p.add_argument("--global-scale", type=_pair, default=(0.4, 1.0))
    p.add_argument("--local-scale", type=_pair, default=(0.05, 0.4))
    p.add_argument("--drop-path-rate", type=float, default=0.1)
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none",
                   help="autocast precision; a non-finite step falls back to fp32")
    p.add_argument("--knn-every", type=int, default=1, help="k-NN accuracy every N epochs when labels exist (0 = off)")
    p.add_argument("--held-out", type=int, default=2000, help="held-out images for k-NN (labelled data only)")
    p.add_argument("--save-every", type=int, default=0, help="also keep checkpointNNNN.pth every N epochs")
    p.add_argument("--max-iters-per-epoch", type=int, default=0, help="cap iterations per epoch (smoke tests)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop after N epochs in this run (schedules still span --epochs; continue with --resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    p.add_argument("--no-figures", dest="figures", action="store_false", help="skip the PNG pictures at the end")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")


def config_from_args(args):
    from vitlab.ssl.pretrain import PRESETS, PretrainConfig
    try:
        model_kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--model-kwargs is not valid JSON: {e}")
    names = PretrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in names and k not in ("model_kwargs",)}
    preset = PRESETS[getattr(args, "preset", "paper")]
    if preset:  # a preset replaces the parser's defaults; flags given on the command line are kept
        defaults = argparse.ArgumentParser()
        add_arguments(defaults)
        defaults = vars(defaults.parse_args([]))
        values.update({k: v for k, v in preset.items() if values.get(k) == defaults.get(k)})
    return PretrainConfig(model_kwargs=model_kwargs, **values)


def run(args) -> int:
    import torch
    from vitlab.ssl.pretrain import pretrain
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = config_from_args(args)
    try:
        metrics = pretrain(cfg, resume=args.resume)
    except (FileNotFoundError, ValueError, FloatingPointError) as e:
        print(f"error: {e}")
        return 2
    if args.json:
        print(json.dumps(metrics))
    return 0

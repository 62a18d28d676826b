"""``vitlab pretrain``: EsViT / DINO self-supervised pretraining (``vitlab train --task pretraining`` with the
pretraining flags). ``--preset small`` starts from ``configs/pretraining/small.yaml`` (small low-resolution
sets); flags given on the command line always win over the preset and the recipe file."""
from __future__ import annotations

from .common import add_flags, pair, run_config, set_threads, train_and_report
from .train import RUN_FLAGS, RUN_SWITCHES, add_run_flags

COMMAND = "pretrain"
HELP = "self-supervised EsViT/DINO pretraining of a multi-stage backbone (no labels needed)"

FLAGS = {
    **RUN_FLAGS,
    "img_size": "esvit.global_size", "global_size": "esvit.global_size", "local_size": "esvit.local_size",
    "n_local": "esvit.n_local", "global_scale": "esvit.global_scale", "local_scale": "esvit.local_scale",
    "loss": "esvit.loss", "out_dim": "esvit.out_dim", "head_hidden_dim": "esvit.head_hidden_dim",
    "head_bottleneck_dim": "esvit.head_bottleneck_dim", "warmup_teacher_temp": "esvit.warmup_teacher_temp",
    "teacher_temp": "esvit.teacher_temp", "warmup_teacher_temp_epochs": "esvit.warmup_teacher_temp_epochs",
    "student_temp": "esvit.student_temp", "centering": "esvit.centering",
    "momentum_teacher": "esvit.momentum_teacher", "momentum_teacher_end": "esvit.momentum_teacher_end",
    "freeze_last_layer": "esvit.freeze_last_layer", "min_lr": "sched.min_lr", "warmup_epochs": "sched.warmup_epochs",
    "weight_decay_end": "sched.weight_decay_end", "drop_path_rate": "model.drop_path", "knn_every": "run.eval_every",
    "held_out": "data.options.held_out", "save_every": "run.keep_every",
}
SWITCHES = {**RUN_SWITCHES, "use_bn_in_head": ("esvit.use_bn_in_head", True),
            "no_norm_last_layer": ("esvit.norm_last_layer", False), "no_figures": ("esvit.figures", False)}


def add_arguments(p) -> None:
    add_run_flags(p)
    add_flags(p, "img_size", img_size={"help": "global crop size (the same as --global-size)"})
    p.add_argument("--model-kwargs", metavar="JSON", help="backbone constructor overrides, e.g. '{\"patch_size\": 2}'")
    p.add_argument("--loss", choices=("view", "view+region", "region"),
                   help="L_V alone (DINO), L_V + L_R (EsViT) or L_R alone (an ablation)")
    p.add_argument("--global-size", type=int)
    p.add_argument("--local-size", type=int)
    p.add_argument("--n-local", type=int, help="number of local crops")
    p.add_argument("--global-scale", type=pair, metavar="LO,HI")
    p.add_argument("--local-scale", type=pair, metavar="LO,HI")
    p.add_argument("--out-dim", type=int, help="DINO head output dimension K")
    p.add_argument("--head-hidden-dim", type=int)
    p.add_argument("--head-bottleneck-dim", type=int)
    p.add_argument("--no-norm-last-layer", action="store_true", default=None)
    p.add_argument("--use-bn-in-head", action="store_true", default=None, help="BatchNorm in the heads' MLP")
    p.add_argument("--warmup-teacher-temp", type=float)
    p.add_argument("--teacher-temp", type=float)
    p.add_argument("--warmup-teacher-temp-epochs", type=int)
    p.add_argument("--student-temp", type=float)
    p.add_argument("--centering", choices=("ema", "sinkhorn"), help="ema (DINO / EsViT) or sinkhorn (SwAV / DINOv2)")
    p.add_argument("--momentum-teacher", type=float)
    p.add_argument("--momentum-teacher-end", type=float, help="final teacher momentum of the cosine schedule")
    p.add_argument("--freeze-last-layer", type=int, metavar="EPOCHS")
    p.add_argument("--min-lr", type=float)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--weight-decay-end", type=float)
    p.add_argument("--drop-path-rate", type=float)
    p.add_argument("--knn-every", type=int, metavar="EPOCHS", help="online k-NN of the teacher (labelled data only)")
    p.add_argument("--held-out", type=int, help="held-out images of a built-in set (the k-NN queries)")
    p.add_argument("--save-every", type=int, metavar="EPOCHS", help="also keep checkpoint-<epoch>.pth")
    p.add_argument("--no-figures", action="store_true", default=None, help="skip the PNG pictures at the end")


def run(args) -> int:
    import json
    set_threads(args.threads)
    extra = {}
    if args.model_kwargs:
        try:
            extra = {"model": {"kwargs": json.loads(args.model_kwargs)}}
        except json.JSONDecodeError as e:
            raise ValueError(f"--model-kwargs is not valid JSON: {e}") from None
    cfg = run_config(args, task="pretraining", flags=FLAGS, switches=SWITCHES, extra=extra)
    return train_and_report(cfg, args)

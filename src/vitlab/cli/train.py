"""``vitlab train``: train any task on the one engine, from a YAML recipe plus command-line overrides.

``--task`` picks the recipe (classification, video, segmentation, pretraining); ``vitlab pretrain`` and
``vitlab segment train`` are the same command with their tasks' own flags. Under ``torchrun`` each
process takes ``--batch-size`` images per step (DDP: NCCL on GPUs, gloo on CPU).
"""
from __future__ import annotations

from .common import add_flags, run_config, set_threads, train_and_report

COMMAND = "train"
HELP = "train a model: classification, video, segmentation or pretraining (YAML recipe + flags; torchrun for DDP)"

# flag destination -> config key, for the flags of add_run_flags (every training command has them)
RUN_FLAGS = {
    "model": "model.name", "data": "data.name", "output": "run.output", "epochs": "sched.epochs",
    "steps": "sched.steps", "max_steps": "sched.max_steps", "batch_size": "data.batch_size", "lr": "optim.lr",
    "weight_decay": "optim.weight_decay", "clip_grad": "optim.clip_grad", "seed": "run.seed", "device": "run.device",
    "amp": "amp.dtype", "workers": "data.workers", "threads": "run.threads", "progress": "run.progress",
    "pretrained": "model.pretrained", "checkpoint_every": "run.checkpoint_every", "log_every": "run.log_every",
    "accum_steps": "optim.accum_steps", "eval_every": "run.eval_every",
}
RUN_SWITCHES = {"channels_last": ("model.channels_last", True), "compile": ("model.compile", True),
                "grad_checkpointing": ("model.grad_checkpointing", True)}
FLAGS = {
    **RUN_FLAGS, "img_size": "data.img_size", "layer_decay": "optim.layer_decay", "drop_path": "model.drop_path",
    "mixup": "aug.mixup", "cutmix": "aug.cutmix", "smoothing": "aug.smoothing", "aa": "aug.auto_augment",
    "reprob": "aug.reprob", "warmup_epochs": "sched.warmup_epochs",
}
SWITCHES = {**RUN_SWITCHES, "ema": ("ema.enabled", True), "mix_token": ("aug.mix_token", True)}


def add_run_flags(p, *, model_default_help: str = "") -> None:
    """The flags every training command shares."""
    add_flags(p, "config", "preset", "resume", "overwrite", "output", "model", "data", "batch_size", "device",
              "threads", "seed", "workers", "amp", "progress", "set", "json")
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--steps", type=int, help="schedule length in optimizer steps (instead of --epochs)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (the schedule is unchanged; "
                                                 "continue later with --resume)")
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--clip-grad", type=float, help="gradient clipping threshold")
    p.add_argument("--accum-steps", type=int, help="micro-batches per optimizer step")
    p.add_argument("--checkpoint-every", type=int, metavar="STEPS", help="also write last.pth every N steps")
    p.add_argument("--log-every", type=int, metavar="STEPS")
    p.add_argument("--eval-every", type=int, metavar="EPOCHS", help="epochs between evaluations (0: at the end)")
    p.add_argument("--pretrained", metavar="FILE", help="initialise from a checkpoint or model folder")
    for name in ("channels_last", "compile", "grad_checkpointing"):
        p.add_argument(f"--{name.replace('_', '-')}", action="store_true", default=None)


def add_arguments(p) -> None:
    from vitlab.tasks import TASKS
    p.add_argument("--task", choices=sorted(TASKS), help="what to train (default: the recipe's, else classification)")
    add_run_flags(p)
    add_flags(p, "img_size")
    p.add_argument("--layer-decay", type=float, help="layer-wise lr decay, e.g. 0.75")
    p.add_argument("--drop-path", type=float, help="stochastic depth rate")
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--mixup", type=float, help="Mixup alpha")
    p.add_argument("--cutmix", type=float, help="CutMix alpha")
    p.add_argument("--smoothing", type=float, help="label smoothing")
    p.add_argument("--aa", help="RandAugment string, e.g. rand-m9-mstd0.5-inc1")
    p.add_argument("--reprob", type=float, help="random erasing probability")
    for name in ("ema", "mix_token"):
        p.add_argument(f"--{name.replace('_', '-')}", action="store_true", default=None)


def run(args) -> int:
    set_threads(args.threads)
    return train_and_report(run_config(args, task=None, flags=FLAGS, switches=SWITCHES), args)

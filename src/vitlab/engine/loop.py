"""The one training loop every task runs on, on a laptop CPU or under torchrun (DINO's train/epoch split).

:func:`fit` claims the run folder, :func:`build_session` builds everything, :func:`train_one_epoch`
steps through one epoch and :func:`finish_run` writes what the run leaves behind. A task
(:class:`~vitlab.engine.task.Task`) supplies the model, the data, one micro-step's loss and the
evaluation; the engine owns the rest:

* device (``run.device``), torchrun DDP (NCCL on GPUs, gloo on CPU) with SyncBatchNorm on GPUs,
  ``torch.compile`` (with the fused optimizer kernels), channels-last, gradient checkpointing;
* bf16/fp16 autocast (fp16 with a gradient scaler); a step whose loss is not finite under autocast is
  redone in fp32 and autocast stays off (``amp.fp32_fallback``); a non-finite fp32 loss stops the run
  naming the step and keeps the last good checkpoint;
* gradient accumulation (DDP synchronises only the last micro-batch), clipping (global norm or
  per parameter), EMA weights, per-step lr / weight-decay schedules, the lr scaled with the global
  batch (``optim.lr_base_batch``);
* a progress bar on a terminal (plain lines when piped), ``metrics.jsonl``, ``curves.png``,
  ``final.json`` (and TensorBoard event files with ``run.tensorboard``); unreadable files skipped and
  reported by name;
* one training-state checkpoint (:mod:`vitlab.engine.state`): ``last.pth`` at every epoch end and
  every ``run.checkpoint_every`` steps, ``best.pth`` when ``task.monitor`` improves; ``--resume``
  continues bit-exactly, mid-epoch included.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from vitlab.checkpoints.atomic import atomic_write_json, atomic_write_text
from vitlab.data.folder import collate_skipping
from vitlab.errors import ConfigError, DataError, TrainingDiverged

from . import state as st
from .config import dump_yaml
from .distributed import DistInfo, all_gather_object, all_reduce_sum, barrier, cleanup, init_distributed
from .ema import ModelEma
from .loaders import PrefetchLoader, train_loader
from .metrics import METRICS_NAME, MetricsLog, read_records
from .optim import clip_gradients, create_optimizer
from .plots import plot_curves
from .progress import Progress
from .run_folder import claim_run_folder
from .runtime import autocast, fuse_optimizer_step, no_sync, prepare_module, resolve_device, set_threads
from .schedule import StepSchedule
from .tensorboard import TensorBoardLog, require_tensorboard


@dataclass
class Position:
    epoch: int = 0              # completed epochs
    step: int = 0               # completed optimizer steps
    samples_in_epoch: int = 0   # samples of the current epoch consumed by all ranks together


@dataclass
class Session:
    """Everything a run holds while it trains; tasks read ``cfg``, ``device``, ``dist``, ``pos`` and the sizes."""
    cfg: dict
    task: object
    dist: DistInfo
    device: torch.device
    out: Path
    pos: Position = field(default_factory=Position)
    running: dict = field(default_factory=lambda: {"window": {}, "window_steps": 0, "epoch": {}, "epoch_steps": 0,
                                                  "skipped": 0})
    amp: str | None = None
    best: float | None = None
    last_eval: dict | None = None
    last_eval_step: int | None = None
    skipped_names: list = field(default_factory=list)
    micro: int = 0              # index of the micro-batch within the current optimizer step
    last_lr: float = 0.0        # the lr of the latest optimizer step
    compile_reported: bool = False  # whether the first compiled step's time was logged
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def model(self):
        return self.task.model

    def log(self, message: str) -> None:
        if self.is_main:
            if getattr(self, "progress", None) is not None:
                self.progress.write(message)
            else:
                print(message, flush=True)


# --- building -------------------------------------------------------------------------------------

def _plan(s: Session) -> None:
    """Batch sizes, steps per epoch, the schedule's length and where the run stops."""
    cfg = s.cfg
    s.batch_size, s.accum = cfg["data"]["batch_size"], cfg["optim"]["accum_steps"]
    s.global_batch = s.batch_size * s.accum * s.dist.world_size
    s.steps_per_epoch = len(s.sampler) // (s.batch_size * s.accum)
    s.total_steps = cfg["sched"]["steps"] or cfg["sched"]["epochs"] * s.steps_per_epoch
    s.epochs = math.ceil(s.total_steps / s.steps_per_epoch)
    s.max_steps = min(cfg["sched"]["max_steps"] or s.total_steps, s.total_steps)
    warm = cfg["sched"]["warmup_steps"]
    s.warmup_steps = int(warm if warm is not None else round(cfg["sched"]["warmup_epochs"] * s.steps_per_epoch))
    base = cfg["optim"]["lr_base_batch"]
    s.lr = cfg["optim"]["lr"] * (s.global_batch / base if base else 1.0)


def build_session(cfg: dict, task, dist: DistInfo, state: dict | None) -> Session:
    """Device, task (model + data), optimizer, schedule, scaler, EMA, DDP; a resumed state restored."""
    run = cfg["run"]
    set_threads(run["threads"])
    s = Session(cfg, task, dist, resolve_device(run["device"], dist), Path(run["output"]), amp=cfg["amp"]["dtype"])
    _seed_everything(run["seed"])
    if state is not None:
        _check_resumable(s, state)
    task.build(s)
    if state is not None:
        _check_classes(s, state)
    model = task.model.to(s.device)
    if cfg["model"]["channels_last"]:
        model.to(memory_format=torch.channels_last)
    if cfg["model"]["grad_checkpointing"] and hasattr(model, "set_grad_checkpointing"):
        model.set_grad_checkpointing(True)
    s.ema = ModelEma(model, cfg["ema"]["decay"], cfg["ema"]["warmup"]) if cfg["ema"]["enabled"] else None
    s.loader, s.sampler = train_loader(task.train_set, batch_size=cfg["data"]["batch_size"],
                                       accum_steps=cfg["optim"]["accum_steps"], workers=cfg["data"]["workers"],
                                       seed=run["seed"], dist=dist, pin_memory=s.device.type == "cuda",
                                       collate_fn=task.collate_fn() or collate_skipping)
    if s.device.type == "cuda":   # the next batch's host -> device copy overlaps this step (side stream)
        s.loader = PrefetchLoader(s.loader, s.device)
    _plan(s)
    s.optimizer = create_optimizer(model, {**cfg["optim"], "lr": s.lr})
    sched = cfg["sched"]
    s.schedule = StepSchedule(s.optimizer, name=sched["name"], base_lr=s.lr, total_steps=s.total_steps,
                              warmup_steps=s.warmup_steps, warmup_lr=sched["warmup_lr"], min_lr=sched["min_lr"],
                              power=sched["power"], weight_decay=cfg["optim"]["weight_decay"],
                              weight_decay_end=sched["weight_decay_end"], gamma=sched["gamma"],
                              milestones=[round(m * s.steps_per_epoch) for m in sched["milestones"]])
    s.scaler = torch.amp.GradScaler(s.device.type, enabled=s.amp == "fp16")
    s.module = prepare_module(task.train_module(), device=s.device, dist=dist, sync_bn=cfg["model"]["sync_bn"],
                              compile_module=cfg["model"]["compile"], find_unused_parameters=task.ddp_find_unused)
    if dist.rank:   # the same initial weights everywhere, then each process its own stream (drop-path, dropout)
        torch.manual_seed(run["seed"] * 1_000_003 + dist.rank)
    if state is not None:
        _restore(s, state)
    if cfg["model"]["compile"]:
        fuse_optimizer_step(s.optimizer)
    s.metrics = MetricsLog(s.out / METRICS_NAME, enabled=s.is_main,
                           resume_step=s.pos.step if state is not None else None)
    s.tensorboard = None
    if run.get("tensorboard") and s.is_main:    # every metrics record also goes to RUN/tensorboard/
        s.tensorboard = TensorBoardLog(s.out, resume_step=s.pos.step if state is not None else None)
        s.metrics.sinks.append(s.tensorboard)
    s.progress = Progress(run["progress"], enabled=s.is_main)
    if state is None:
        _announce(s)
    return s


def _seed_everything(seed: int) -> None:
    import random
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def _announce(s: Session) -> None:
    """config.yaml, the data record and the first log line of a fresh run."""
    if s.is_main:
        atomic_write_text(s.out / "config.yaml", dump_yaml(s.cfg))
        s.metrics.write({"kind": "data", "step": 0, "task": s.task.name, **s.task.data_record()})
    lr = s.cfg["optim"]
    scaled = (f" ({lr['lr']:g} per {lr['lr_base_batch']} images)" if lr["lr_base_batch"] else "")
    s.log(s.task.describe(s))
    s.log(f"{s.epochs} epochs x {s.steps_per_epoch} steps = {s.total_steps} steps"
          + (f" (stopping after {s.max_steps})" if s.max_steps < s.total_steps else "")
          + f", global batch {s.global_batch} ({s.batch_size} x {s.dist.world_size} processes x {s.accum} "
            f"accumulated), lr {s.lr:.3g}{scaled}, device {s.device}"
          + (f", autocast {s.amp}" if s.amp else ""))


def _check_resumable(s: Session, state: dict) -> None:
    meta = state.get("meta", {})
    if state.get("task") != s.task.name:
        raise ConfigError(f"--resume: the run was a {state.get('task')!r} run, not {s.task.name!r}")
    if meta.get("model_name") not in (None, s.cfg["model"]["name"]):
        raise ConfigError(f"--resume: the run trained model {meta['model_name']!r}; it cannot continue as "
                          f"{s.cfg['model']['name']!r} (leave out --model, or start a new run)")
    batch = s.cfg["data"]["batch_size"] * s.cfg["optim"]["accum_steps"] * s.dist.world_size
    if meta.get("global_batch") not in (None, batch):
        raise ConfigError(f"--resume: the run's global batch was {meta['global_batch']}, now it would be {batch}; "
                          f"keep batch_size x processes x accum_steps the same to continue exactly")


def _check_classes(s: Session, state: dict) -> None:
    classes = state.get("meta", {}).get("num_classes")
    if classes is not None and s.task.class_names and classes != len(s.task.class_names):
        raise ConfigError(f"--resume: the run was trained for {classes} classes but the dataset has "
                          f"{len(s.task.class_names)}")


def _restore(s: Session, state: dict) -> None:
    from vitlab.checkpoints.load import load_checkpoint
    load_checkpoint(s.task.model, state["model"], strict=True)
    s.optimizer.load_state_dict(state["optimizer"])
    s.schedule.load_state_dict(state["scheduler"])
    if state.get("scaler") is not None:
        s.scaler.load_state_dict(state["scaler"])
    if s.ema is not None and state.get("state_dict_ema") is not None:
        s.ema.module.load_state_dict(state["state_dict_ema"])
        s.ema.num_updates.fill_(int(state["ema_updates"]))
    s.pos = Position(int(state["epoch"]), int(state["step"]), int(state["samples_in_epoch"]))
    engine = state["engine"]
    s.running, s.best, s.amp = engine["running"], engine["best"], engine["amp"]
    s.last_eval, s.last_eval_step = engine["last_eval"], engine["last_eval_step"]
    s.task.load_state_dict(state)
    rngs = state["rng"]
    if len(rngs) == s.dist.world_size:
        st.set_rng_state(rngs[s.dist.rank])
    s.log(f"resumed {s.out} at epoch {s.pos.epoch + 1}, step {s.pos.step}")


# --- saving -----------------------------------------------------------------------------------------

def save(s: Session, name: str) -> None:
    """Write the training state as ``name`` in the run folder (every rank calls: RNG states are gathered)."""
    rngs = all_gather_object(st.rng_state(), s.dist)
    if not s.is_main:
        return
    model = s.task.model
    st.save_state(s.out / name, {
        "task": s.task.name, "model": model.state_dict(),
        "state_dict_ema": s.ema.module.state_dict() if s.ema is not None else None,
        "ema_updates": int(s.ema.num_updates) if s.ema is not None else None,
        "optimizer": s.optimizer.state_dict(), "scheduler": s.schedule.state_dict(),
        "scaler": s.scaler.state_dict() if s.scaler.is_enabled() else None, "rng": rngs,
        "epoch": s.pos.epoch, "step": s.pos.step, "samples_in_epoch": s.pos.samples_in_epoch,
        "engine": {"running": s.running, "best": s.best, "amp": s.amp, "last_eval": _plain_eval(s.last_eval),
                   "last_eval_step": s.last_eval_step},
        "meta": {"model_name": s.cfg["model"]["name"], "model_kwargs": dict(getattr(model, "model_kwargs", {})),
                 "num_classes": len(s.task.class_names) or None, "class_names": list(s.task.class_names),
                 "global_batch": s.global_batch, "world_size": s.dist.world_size},
        "task_state": s.task.state_dict(),
    })


def _plain_eval(metrics: dict | None) -> dict | None:
    """The scalar entries of an evaluation (what the checkpoint keeps)."""
    return None if metrics is None else {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}


# --- stepping ---------------------------------------------------------------------------------------

def _take(s: Session, batch):
    """``(inputs, targets)`` of a collated batch; unreadable files are remembered by name."""
    inputs, targets, skipped = batch
    if skipped:
        s.skipped_names.extend(skipped)
    if inputs is None:
        raise DataError(f"every sample of a batch was unreadable: {', '.join(skipped[:5])}")
    return inputs, targets


def _all_finite(s: Session, loss: torch.Tensor) -> bool:
    flag = torch.tensor([1.0 if math.isfinite(float(loss.detach())) else 0.0], dtype=torch.float64)
    return bool(all_reduce_sum(flag, s.dist).item() == s.dist.world_size)


def micro_step(s: Session, batch, last: bool) -> dict:
    """Forward, loss and backward of one micro-batch; returns the detached loss parts."""
    with no_sync(s.module, sync=last or not s.dist.enabled):
        for dtype in ([s.amp, None] if s.amp and s.cfg["amp"]["fp32_fallback"] else [s.amp]):
            with autocast(s.device, dtype):
                loss, parts = s.task.train_step(s.module, batch, s)
            if _all_finite(s, loss):
                break
            if dtype is not None and s.cfg["amp"]["fp32_fallback"]:
                s.log(f"step {s.pos.step + 1}: the loss is not finite under {dtype} autocast; redoing the step in "
                      f"fp32 and keeping autocast off from now on")
                s.amp = None
        else:
            raise TrainingDiverged(f"loss is {float(loss.detach())} at step {s.pos.step + 1} (epoch "
                                   f"{s.pos.epoch + 1}); stopped. The last good checkpoint is {s.out / st.LAST}")
        s.scaler.scale(loss / s.accum).backward()
    s.task.after_backward(s)
    out = {"loss": loss.detach().double().cpu()}
    for k, v in parts.items():
        out[k] = (v.detach().double().cpu() if torch.is_tensor(v) else torch.tensor(float(v), dtype=torch.float64))
    return out


def optimizer_step(s: Session) -> float:
    """Clip, step, schedule, EMA and the task's hooks; returns the lr the step used."""
    optim = s.cfg["optim"]
    if optim["clip_grad"]:
        s.scaler.unscale_(s.optimizer)
        clip_gradients(s.task.model.parameters(), optim["clip_grad"], optim["clip_mode"])
    s.task.before_optimizer_step(s)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    lr = s.last_lr = s.schedule.current()
    s.schedule.step()
    if s.ema is not None:
        s.ema.update(s.task.model)
    s.task.after_optimizer_step(s)
    s.pos.step += 1
    s.pos.samples_in_epoch += s.global_batch
    return lr


def _record_step(s: Session, parts: dict, lr: float, images: int, t0: float) -> None:
    """Average the step's parts over ranks, add them to the running sums, log every ``log_every`` steps."""
    keys = sorted(parts)
    values = all_reduce_sum(torch.stack([parts[k] for k in keys]), s.dist) / s.dist.world_size
    r = s.running
    for k, v in zip(keys, values.tolist()):
        r["window"][k] = r["window"].get(k, 0.0) + v
        r["epoch"][k] = r["epoch"].get(k, 0.0) + v
    r["window_steps"] += 1
    r["epoch_steps"] += 1
    ips = images * s.dist.world_size / max(time.perf_counter() - t0, 1e-9)
    s.progress.update(values[keys.index("loss")].item(), lr, ips)
    if s.pos.step % s.cfg["run"]["log_every"] == 0:
        rec = {"kind": "train", "epoch": s.pos.epoch + 1, "step": s.pos.step,
               **{k: v / r["window_steps"] for k, v in r["window"].items()}, "lr": lr, "images_per_s": round(ips, 1)}
        s.metrics.write(rec)
        s.progress.log_line(rec, s.max_steps)
        r["window"], r["window_steps"] = {}, 0


def train_one_epoch(s: Session) -> None:
    """Optimizer steps until the epoch ends or the run stops; checkpoints and evaluations on the way."""
    s.sampler.set_epoch(s.pos.epoch, start=s.pos.samples_in_epoch // s.dist.world_size)
    s.task.model.train()
    s.progress.start_epoch(s.pos.epoch, s.epochs, s.steps_per_epoch, s.pos.samples_in_epoch // s.global_batch)
    parts, micro, images, t0 = {}, 0, 0, time.perf_counter()
    for batch in s.loader:
        batch = _take(s, batch)
        s.micro = micro
        micro += 1
        t_step = time.perf_counter()
        step_parts = micro_step(s, batch, last=micro == s.accum)
        if s.cfg["model"]["compile"] and not s.compile_reported:
            s.compile_reported = True
            s.log(f"first compiled micro-step took {time.perf_counter() - t_step:.1f}s (torch.compile traces and "
                  f"compiles forward and backward once)")
        images += s.task.batch_size_of(batch)
        parts = {k: parts.get(k, 0.0) + v / s.accum for k, v in step_parts.items()}
        if micro < s.accum:
            continue
        lr = optimizer_step(s)
        _record_step(s, parts, lr, images, t0)
        parts, micro = {}, 0
        every = s.cfg["run"]
        if every["eval_every_steps"] and s.pos.step % every["eval_every_steps"] == 0 and s.pos.step < s.max_steps:
            evaluate(s)
        if every["checkpoint_every"] and s.pos.step % every["checkpoint_every"] == 0:
            save(s, st.LAST)
        if s.pos.step >= s.max_steps or s.pos.samples_in_epoch >= s.steps_per_epoch * s.global_batch:
            break
    s.progress.close()
    if s.pos.samples_in_epoch >= s.steps_per_epoch * s.global_batch:
        _end_epoch(s)


def _end_epoch(s: Session) -> None:
    """The epoch record, the evaluation that is due, and the checkpoints of an epoch's end."""
    s.pos.epoch += 1
    s.pos.samples_in_epoch = 0
    r = s.running
    skipped = [n for names in all_gather_object(s.skipped_names, s.dist) for n in names]
    s.skipped_names = []
    r["skipped"] += len(skipped)
    if skipped:
        s.log(f"epoch {s.pos.epoch}: skipped {len(skipped)} unreadable file(s): {'; '.join(skipped[:10])}"
              + (f"; ... (+{len(skipped) - 10} more)" if len(skipped) > 10 else ""))
    s.metrics.write({"kind": "epoch", "epoch": s.pos.epoch, "step": s.pos.step, "lr": s.last_lr,
                     **{f"train_{k}": v / max(r["epoch_steps"], 1) for k, v in r["epoch"].items()},
                     "skipped_images": r["skipped"], **({"skipped_files": skipped} if skipped else {})})
    r["epoch"], r["epoch_steps"] = {}, 0
    every = s.cfg["run"]["eval_every"]
    if every and s.pos.epoch % every == 0 and not s.cfg["run"]["eval_every_steps"] and s.pos.step < s.max_steps:
        evaluate(s)
    keep = s.cfg["run"]["keep_every"]
    if keep and s.pos.epoch % keep == 0:
        save(s, f"checkpoint-{s.pos.epoch:04d}.pth")
    if s.pos.step < s.max_steps:   # the run's end saves it after the final evaluation
        save(s, st.LAST)


def evaluate(s: Session) -> dict | None:
    """The task's evaluation of the model (and of the EMA weights), logged; ``best.pth`` on improvement."""
    metrics = s.task.evaluate(s, s.task.model)
    if metrics is None:
        return None
    if s.ema is not None:
        ema = s.task.evaluate(s, s.ema.module) or {}
        metrics.update({f"ema_{k}": v for k, v in ema.items()
                        if isinstance(v, (int, float)) and k not in ("images_per_s", "count", "skipped")})
    s.task.model.train()
    s.last_eval, s.last_eval_step = metrics, s.pos.step
    epoch = s.pos.epoch + (1 if s.pos.samples_in_epoch else 0)       # the epoch in progress, or just ended
    s.metrics.write({"kind": "eval", "epoch": epoch, "step": s.pos.step,
                     **{k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}})
    s.log(f"epoch {epoch}/{s.epochs} step {s.pos.step}: {s.task.eval_line(metrics)}")
    key = s.task.monitor
    if key and isinstance(metrics.get(key), (int, float)) and math.isfinite(metrics[key]) \
            and (s.best is None or metrics[key] > s.best):
        s.best = float(metrics[key])
        save(s, st.BEST)
    return metrics


# --- the run ----------------------------------------------------------------------------------------

def finish_run(s: Session) -> dict:
    """The final evaluation (unless one ran at this step), ``last.pth``, the task's artefacts, curves, ``final.json``."""
    s.progress.close()
    if s.last_eval_step != s.pos.step:
        evaluate(s)
    save(s, st.LAST)
    summary = {}
    if s.is_main:
        s.metrics.close()
        summary = {"output": str(s.out), "task": s.task.name, "step": s.pos.step, "epoch": s.pos.epoch,
                   "minutes": round((time.perf_counter() - s.t_start) / 60, 2), **s.task.finish(s, s.last_eval)}
        if s.best is not None:
            summary[f"best_{s.task.monitor}"] = s.best
        atomic_write_json(s.out / "final.json", summary)
        if s.cfg["run"]["plots"]:
            title = f"{s.cfg['model']['name']} on {s.cfg['data']['name']} ({s.task.name}, {s.out.name})"
            plot_curves(read_records(s.out / METRICS_NAME), s.out / "curves.png", title=title,
                        metric=s.task.monitor)
        if s.tensorboard is not None:
            s.tensorboard.add_figures(s.out, s.pos.step)
            s.tensorboard.close()
    barrier(s.dist)
    return summary


def fit(cfg: dict, task, *, resume: str | Path | None = None, overwrite: bool = False) -> dict:
    """Train ``task`` as ``cfg`` says, in ``cfg['run']['output']``; returns the task's summary.

    ``resume``: a run folder (or its ``last.pth``) to continue exactly; ``overwrite``: replace the
    contents of an existing output folder. Without either, a folder that holds files is refused.
    """
    if cfg["run"].get("tensorboard"):
        require_tensorboard()          # before anything runs: one line naming the install command
    dist = init_distributed(cfg["run"]["device"])
    try:
        folder = claim_run_folder(cfg["run"]["output"], resume=resume is not None, overwrite=overwrite,
                                  is_main=dist.is_main, distributed=dist.enabled)
        with folder:
            state = st.load_state(resume) if resume is not None else None
            s = build_session(cfg, task, dist, state)
            if cfg["run"]["detect_anomaly"]:
                torch.autograd.set_detect_anomaly(True)
            if state is not None and s.pos.step >= s.max_steps:
                s.log(f"the run already reached step {s.pos.step} (its last step); give a larger --max-steps or "
                      f"--epochs to train further")
            while s.pos.step < s.max_steps:
                train_one_epoch(s)
            summary = finish_run(s)
            if s.is_main:
                s.log(s.task.summary_line(summary))
            return summary
    finally:
        cleanup(dist)

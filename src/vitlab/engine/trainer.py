"""The classification training loop behind ``vitlab train`` (single process or torchrun/DDP).

One run = one output folder: ``config.yaml``, ``metrics.jsonl``, ``last.pth`` / ``best.pth``
(full training state, atomic), ``model/`` (config.json + model.safetensors for ``vitlab eval``
and ``vitlab.from_pretrained``), ``curves.png``, ``confusion.png`` and ``final.json``.
"""
from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vitlab.checkpoints.atomic import atomic_write_json, atomic_write_text
from vitlab.data.mixup import Mixup

from . import checkpoint as ckpt
from .builders import build_data, build_model, eval_loader, resolve_device, set_threads, train_loader
from .config import dump_yaml
from .distributed import DistInfo, all_reduce_sum, barrier, cleanup, init_distributed
from .ema import ModelEma
from .evaluate import autocast, evaluate
from .losses import classification_loss
from .optim import create_optimizer
from .plots import plot_confusion, plot_curves
from .progress import Progress
from .scheduler import WarmupCosine

TIMING_KEYS = ("images_per_s", "time", "elapsed_s")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def _metrics_log(path: Path, keep_until_step: int | None, main: bool):
    """Open metrics.jsonl for appending; on resume drop records written after the checkpoint."""
    if main and keep_until_step is not None and path.exists():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= keep_until_step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))
    if not main:
        return None
    return open(path, "a" if keep_until_step is not None else "w")  # a fresh run starts a fresh log


def _write(log, record: dict) -> None:
    if log is not None:
        log.write(json.dumps(record) + "\n")
        log.flush()


def _read_records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def train(cfg: dict, resume: str | Path | None = None, return_model: bool = False) -> dict:
    """Run a classification training described by ``cfg`` (see :mod:`vitlab.engine.config`).

    Returns a summary (held-out top-1/top-5, loss, steps); ``return_model=True`` adds the trained
    ``model`` (every rank gets its own replica).
    """
    dist_info = init_distributed(cfg["run"]["device"])
    try:
        result = _train(cfg, resume, dist_info)
        if not return_model:
            result.pop("model", None)
        return result
    finally:
        cleanup(dist_info)


def _train(cfg: dict, resume, dist_info: DistInfo) -> dict:
    run = cfg["run"]
    set_threads(run.get("threads"))
    device = resolve_device(run["device"], dist_info)
    main = dist_info.is_main
    out = Path(run["output"])
    state = ckpt.load_training_state(resume) if resume else None
    if main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", dump_yaml(cfg))

    torch.manual_seed(int(run["seed"]))
    bundle, resolved = build_data(cfg)
    if bundle.train is None or len(bundle.train) == 0:
        raise ValueError(f"dataset {cfg['data']['name']!r} has no training images")
    num_classes = bundle.num_classes
    if cfg["aug"].get("token_labels"):
        from vitlab.data.token_labels import TokenLabelDataset, check_token_label_recipe, load_token_label_maps
        check_token_label_recipe(cfg["aug"])
        bundle.train = TokenLabelDataset(bundle.train, load_token_label_maps(cfg["aug"]["token_labels"]), num_classes)
    model = build_model(cfg, num_classes, resolved["model_kwargs"])
    if state is not None and state.get("num_classes") not in (None, num_classes):
        raise ValueError(f"checkpoint {resume} was trained for {state['num_classes']} classes but the dataset has "
                         f"{num_classes}")
    model.to(device)
    if cfg["model"].get("channels_last"):
        model.to(memory_format=torch.channels_last)
    ema = ModelEma(model, cfg["ema"]["decay"], cfg["ema"]["warmup"]) if cfg["ema"]["enabled"] else None
    optimizer = create_optimizer(model, cfg["optim"])

    loader, sampler = train_loader(bundle.train, cfg, dist_info)
    accum = int(cfg["optim"]["accum_steps"])
    batches_per_epoch = len(sampler) // int(cfg["data"]["batch_size"])
    steps_per_epoch = batches_per_epoch // accum
    epochs = int(cfg["sched"]["epochs"])
    total_steps = epochs * steps_per_epoch
    max_steps = cfg["sched"].get("max_steps") or total_steps
    scheduler = WarmupCosine(optimizer, total_steps, cfg["optim"]["lr"],
                             int(round(cfg["sched"]["warmup_epochs"] * steps_per_epoch)),
                             cfg["sched"]["warmup_lr"], cfg["sched"]["min_lr"])
    amp = cfg["amp"]["dtype"]
    if amp not in (None, "bf16", "fp16"):
        raise ValueError(f"amp.dtype must be null, bf16 or fp16, got {amp!r}")
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    mixup = Mixup(num_classes, cfg["aug"]["mixup"], cfg["aug"]["cutmix"], cfg["aug"]["mix_prob"],
                  cfg["aug"]["switch_prob"], cfg["aug"]["smoothing"])

    train_model = model
    if dist_info.enabled:
        if cfg["model"].get("sync_bn", True) and device.type == "cuda":
            train_model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(train_model)
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg["model"].get("compile"):
        train_model = torch.compile(train_model)

    epoch, step, batch_in_epoch, best = 0, 0, 0, -1.0
    running = {"loss_sum": 0.0, "count": 0, "skipped": 0, "epoch_loss_sum": 0.0, "epoch_count": 0}
    if state is not None:
        ckpt.unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("state_dict_ema") is not None:
            ema.module.load_state_dict(state["state_dict_ema"])
            ema.num_updates.fill_(int(state["ema_updates"]))
        epoch, step, batch_in_epoch = state["epoch"], state["step"], state["batch_in_epoch"]
        best, running = state["best_top1"], dict(state["running"])
        ckpt.set_rng_state(state["rng"])
    log = _metrics_log(out / "metrics.jsonl", step if state is not None else None, main)
    if main and state is None:
        _write(log, {"kind": "data", "step": 0, "dataset": cfg["data"]["name"], "classes": num_classes,
                     "train": len(bundle.train), "val": len(bundle.val) if bundle.val is not None else 0,
                     **{k: v for k, v in bundle.info.items() if isinstance(v, (int, float, str))}})
        n_params = sum(p.numel() for p in model.parameters())
        print(f"model {cfg['model']['name']}: {n_params / 1e6:.3f}M params, input {resolved['in_chans']}x"
              f"{resolved['img_size']}x{resolved['img_size']}; data {cfg['data']['name']}: {len(bundle.train)} train"
              f" / {len(bundle.val) if bundle.val is not None else 0} held-out, {num_classes} classes"
              + (f" ({bundle.info['duplicates_moved_to_train']} duplicate images moved to train)"
                 if "duplicates_moved_to_train" in bundle.info else ""), flush=True)

    def save(name: str) -> None:
        if main:
            ckpt.save_training_state(out / name, model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                     ema=ema, epoch=epoch, step=step, batch_in_epoch=batch_in_epoch,
                                     extra={"best_top1": best, "running": running, "num_classes": num_classes,
                                            "class_names": list(bundle.class_names),
                                            "model_name": cfg["model"]["name"]})

    val_loader = eval_loader(bundle.val, int(cfg["data"]["eval_batch_size"]), int(cfg["data"]["workers"]),
                             dist_info) if bundle.val is not None else None

    def run_eval() -> dict:
        res = evaluate(model, val_loader, num_classes, device, bundle.predict, amp, dist_info)
        if ema is not None:
            res["ema"] = evaluate(ema.module, val_loader, num_classes, device, bundle.predict, amp, dist_info)
        return res

    progress = Progress(run.get("progress", "auto"), enabled=main)
    log_every, ckpt_every = int(run["log_every"]), int(run.get("checkpoint_every") or 0)
    aux_weight = float(cfg["loss"]["aux_weight"])
    train_model.train()
    t_start, t_images = time.perf_counter(), 0
    last_eval: dict = {}
    stop = step >= max_steps
    while epoch < epochs and not stop:
        sampler.set_epoch(epoch, start=batch_in_epoch * int(cfg["data"]["batch_size"]))
        progress.start_epoch(epoch, epochs, steps_per_epoch, batch_in_epoch // accum)
        micro = 0
        loss_acc = torch.zeros((), dtype=torch.float64)
        for x, y, skipped in loader:
            running["skipped"] += skipped
            if x is None:
                continue
            maps = None
            if isinstance(x, (list, tuple)):  # token-labeling targets ride along with the images
                x, maps = x[0], x[1].to(device, non_blocking=True)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if int(y.min()) < 0 or int(y.max()) >= num_classes:
                raise ValueError(f"labels must be in [0, {num_classes - 1}], got {int(y.min())}..{int(y.max())}")
            if cfg["model"].get("channels_last") and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            rng = np.random.default_rng([int(run["seed"]), step, micro, dist_info.rank])
            x, target, _ = mixup(x, y, rng)
            sync = micro == accum - 1 or not dist_info.enabled
            ctx = train_model.no_sync() if not sync and hasattr(train_model, "no_sync") else _null()
            with ctx:
                with autocast(device, amp):
                    output = train_model(x)
                loss = classification_loss(output, target, aux_weight, token_maps=maps)
                scaler.scale(loss / accum).backward()
            loss_acc += loss.detach().double().cpu() / accum
            micro += 1
            t_images += x.shape[0]
            if micro < accum:
                continue
            # one optimizer step
            step_loss = float(all_reduce_sum(loss_acc.clone(), dist_info)) / dist_info.world_size
            if not math.isfinite(step_loss):
                progress.close()
                raise TrainingDiverged(f"loss is {step_loss} at step {step + 1} (epoch {epoch + 1}); stopped. "
                                       f"The last good checkpoint is {out / ckpt.LAST}")
            if cfg["optim"].get("clip_grad"):
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), float(cfg["optim"]["clip_grad"]))
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            lr = optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0)
            scheduler.step()
            if ema is not None:
                ema.update(model)
            step += 1
            batch_in_epoch += micro
            micro = 0
            loss_acc.zero_()
            running["loss_sum"] += step_loss
            running["count"] += 1
            running["epoch_loss_sum"] += step_loss
            running["epoch_count"] += 1
            elapsed = time.perf_counter() - t_start
            ips = t_images * dist_info.world_size / max(elapsed, 1e-9)
            progress.update(step_loss, lr, ips)
            if step % log_every == 0:
                rec = {"kind": "train", "epoch": epoch + 1, "step": step, "loss": running["loss_sum"] / running["count"],
                       "lr": lr, "images_per_s": round(ips, 1)}
                _write(log, rec)
                progress.log_line(rec, steps_per_epoch * epochs)
                running["loss_sum"], running["count"] = 0.0, 0
            if ckpt_every and step % ckpt_every == 0:
                save(ckpt.LAST)
            if step >= max_steps:
                stop = True
                break
        progress.close()
        end_of_epoch = batch_in_epoch >= batches_per_epoch - batches_per_epoch % accum
        if end_of_epoch:
            epoch += 1
            batch_in_epoch = 0
        if val_loader is not None and (end_of_epoch and epoch % int(run["eval_every"]) == 0 or stop or epoch >= epochs):
            res = run_eval()
            last_eval = res
            rec = {"kind": "eval", "epoch": epoch, "step": step, "top1": res["top1"], "top5": res["top5"],
                   "loss": res["loss"],
                   "train_loss": running["epoch_loss_sum"] / max(running["epoch_count"], 1),
                   "skipped_images": running["skipped"] + res["skipped"]}
            if "ema" in res:
                rec.update(ema_top1=res["ema"]["top1"], ema_top5=res["ema"]["top5"])
            running["epoch_loss_sum"], running["epoch_count"] = 0.0, 0
            _write(log, rec)
            if main:
                print(f"epoch {epoch}/{epochs} step {step}: held-out top-1 {res['top1']:.2f}% top-5 {res['top5']:.2f}%"
                      f" loss {res['loss']:.4f}" + (f" | EMA top-1 {res['ema']['top1']:.2f}%" if "ema" in res else "")
                      + (f" | {running['skipped']} unreadable images skipped" if running["skipped"] else ""),
                      flush=True)
            if res["top1"] > best:
                best = res["top1"]
                save(ckpt.BEST)
        save(ckpt.LAST)
    barrier(dist_info)
    if log is not None:
        log.close()
    result = {"output": str(out), "step": step, "epoch": epoch}
    if not last_eval and val_loader is not None:  # every rank takes part (the counts are all-reduced)
        last_eval = run_eval()
    if main:
        model.save_pretrained(out / "model", label_names=list(bundle.class_names))
        result.update({k: last_eval.get(k) for k in ("top1", "top5", "loss", "per_class", "count")})
        if "ema" in last_eval:
            result["ema_top1"] = last_eval["ema"]["top1"]
        result["best_top1"] = best
        result["train_minutes"] = round((time.perf_counter() - t_start) / 60, 2)
        atomic_write_json(out / "final.json", {**result, "confusion": last_eval.get("confusion"),
                                               "class_names": list(bundle.class_names)})
        if run.get("plots", True):
            plot_curves(_read_records(out / "metrics.jsonl"), out / "curves.png")
            if last_eval.get("confusion") is not None:
                plot_confusion(np.array(last_eval["confusion"]), list(bundle.class_names), out / "confusion.png",
                               f"held-out top-1 {last_eval['top1']:.2f}%")
    result["model"] = model
    return result


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

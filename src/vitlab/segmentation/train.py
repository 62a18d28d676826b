"""Iteration-based segmentation training and evaluation (the mmseg recipe, sized for one machine).

AdamW with the decode head at ``head_lr_mult`` x the learning rate (SegViT uses 10), no weight
decay on norms, biases, position embeddings and class queries, linear warm-up then polynomial
(power 1) decay, gradient clipping. Data order and augmentation are seeded by (seed, epoch, index)
and the RNG state is checkpointed, so ``resume`` continues the same run exactly.

A run folder holds ``config.yaml``, ``metrics.jsonl`` (train and eval records), ``last.pth``
(training state), ``model/`` (``save_pretrained``), ``eval.json``, ``per_class.txt`` and overlays.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from vitlab.checkpoints.atomic import atomic_torch_save, atomic_write_json, atomic_write_text
from vitlab.segmentation.inference import predict_segmentor
from vitlab.segmentation.metrics import SegmentationMetric, format_table
from vitlab.segmentation.visualize import save_overlay

DEFAULTS = dict(model="segvit_micro", data="texture-scenes", data_root=None, reduce_zero_label=None, num_classes=None,
                crop_size=64, scale=None, ratio_range=(0.5, 2.0), iters=2000, batch_size=8, lr=1e-3, head_lr_mult=1.0,
                weight_decay=0.01, warmup_iters=100, grad_clip=1.0, log_interval=20, eval_interval=500, seed=0,
                workers=0, threads=None, mode=None, stride=None, out="runs/segment", overlays=4, resume=False,
                backbone_weights=None, model_kwargs={}, stop_after=None, epochs=None)


def build_datasets(cfg: dict, mean, std):
    """(train, val) :class:`SegmentationFolder`s for ``cfg['data']`` (the built-in set or a folder)."""
    from vitlab.data.segmentation import SegAugment, SegmentationFolder
    from vitlab.data.synthetic_scenes import default_root, write_texture_scenes
    if cfg["data"] == "texture-scenes":
        root = Path(cfg.get("data_root") or default_root())
        if not (root / "dataset.json").is_file():  # an existing set (any size / seed) is used as it is
            write_texture_scenes(root)
        reduce = True if cfg.get("reduce_zero_label") is None else cfg["reduce_zero_label"]
    else:
        root, reduce = Path(cfg["data"]), bool(cfg.get("reduce_zero_label"))
    aug = SegAugment(crop_size=cfg["crop_size"], scale=cfg.get("scale"), ratio_range=tuple(cfg["ratio_range"]))
    common = dict(num_classes=cfg.get("num_classes"), reduce_zero_label=reduce, mean=mean, std=std)
    train = SegmentationFolder(root, "training", augment=aug, seed=cfg["seed"], **common)
    val = SegmentationFolder(root, "validation", **common)
    if not train.num_classes:
        raise ValueError(f"{root} has no dataset.json with class names: pass num_classes")
    return train, val


def param_groups(model, lr: float, weight_decay: float, head_lr_mult: float) -> list[dict]:
    no_decay = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    groups: dict[tuple, list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = 0.0 if (p.ndim <= 1 or name in no_decay or name.endswith(".bias")) else weight_decay
        mult = head_lr_mult if name.startswith("decode_head.") else 1.0
        groups.setdefault((decay, mult), []).append(p)
    return [{"params": ps, "weight_decay": d, "lr": lr * m, "lr_mult": m} for (d, m), ps in groups.items()]


def poly_lr(step: int, total: int, base: float, warmup: int, power: float = 1.0, min_lr: float = 0.0) -> float:
    """Linear warm-up from ~0 to ``base`` over ``warmup`` steps, then (1 - t)^power decay to ``min_lr``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return (base - min_lr) * (1 - t) ** power + min_lr


def _batches(dataset, batch_size: int, seed: int, start_step: int, workers: int):
    """Endless (epoch, batch) stream; the order of epoch e is a permutation seeded by (seed, e)."""
    per_epoch = max(1, len(dataset) // batch_size)
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        dataset.set_epoch(epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed * 100003 + epoch)).tolist()
        sampler = order[offset * batch_size:per_epoch * batch_size]
        loader = DataLoader(torch.utils.data.Subset(dataset, sampler), batch_size=batch_size, shuffle=False,
                            num_workers=workers, drop_last=True,
                            generator=torch.Generator().manual_seed(seed + epoch))  # keeps the global RNG untouched
        for batch in loader:
            yield batch
            step += 1


@torch.no_grad()
def evaluate(model, dataset, mode=None, crop_size=None, stride=None, scales=(1.0,), flip=False,
             overlay_dir=None, num_overlays: int = 0, limit: int | None = None) -> dict:
    """mIoU / mAcc / aAcc over ``dataset`` (batch 1, any image size) with whole/slide/MS+flip inference."""
    metric = SegmentationMetric(model.num_classes, dataset.ignore_index, dataset.class_names or None)
    n = len(dataset) if limit is None else min(limit, len(dataset))
    for i in range(n):
        img, label = dataset[i]
        scores = predict_segmentor(model, img[None], mode, crop_size, stride, scales, flip)
        if scores.shape[-2:] != label.shape:
            scores = F.interpolate(scores, size=label.shape, mode="bilinear", align_corners=False)
        pred = scores.argmax(1)[0]
        metric.update(pred, label)
        if overlay_dir is not None and i < num_overlays:
            save_overlay(Path(overlay_dir) / f"{dataset.images[i].stem}.png", dataset.denormalize(img), pred, label,
                         model.num_classes)
    return metric.compute()


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def train(cfg: dict, progress: bool = True) -> dict:
    """Train a segmentor as configured (see ``DEFAULTS``); returns the final evaluation summary.

    ``stop_after=N`` ends this call at the first checkpoint at or after step N (returning None), for
    runs split into chunks; ``resume=True`` continues from ``last.pth`` exactly where it stopped.
    """
    import vitlab
    cfg = {**DEFAULTS, **cfg}
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    torch.manual_seed(cfg["seed"])
    out = Path(cfg["out"])
    out.mkdir(parents=True, exist_ok=True)
    probe = vitlab.create_model(cfg["model"], **dict(cfg["model_kwargs"]), **(
        {"num_classes": cfg["num_classes"]} if cfg.get("num_classes") else {}))
    train_set, val_set = build_datasets(cfg, probe.pretrained_cfg["mean"], probe.pretrained_cfg["std"])
    if cfg.get("epochs"):  # an epoch budget instead of an iteration count
        cfg["iters"] = int(cfg["epochs"]) * max(1, len(train_set) // cfg["batch_size"])
    model = probe
    if model.num_classes != train_set.num_classes:
        model = vitlab.create_model(cfg["model"], num_classes=train_set.num_classes, **dict(cfg["model_kwargs"]))
    if cfg.get("backbone_weights"):
        report = vitlab.load_checkpoint(model.backbone, cfg["backbone_weights"], strict=False)
        print(report)
    groups = param_groups(model, cfg["lr"], cfg["weight_decay"], cfg["head_lr_mult"])
    optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.999))
    step, metrics_file = 0, out / "metrics.jsonl"
    if cfg["resume"] and (out / "last.pth").is_file():
        state = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
    else:
        metrics_file.unlink(missing_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump({k: (list(v) if isinstance(v, tuple) else v)
                                                             for k, v in cfg.items()}, sort_keys=False))
    model.train()
    batches = _batches(train_set, cfg["batch_size"], cfg["seed"], step, cfg["workers"])
    t0, c0, running = time.time(), time.process_time(), []
    from tqdm import tqdm
    bar = tqdm(total=cfg["iters"], initial=step, disable=not progress, desc="train", dynamic_ncols=True)
    while step < cfg["iters"]:
        img, label = next(batches)
        lr = poly_lr(step, cfg["iters"], cfg["lr"], cfg["warmup_iters"])
        for g in optimizer.param_groups:
            g["lr"] = lr * g["lr_mult"]
        losses = model.loss(img, label)
        if not torch.isfinite(losses["loss"]):
            raise FloatingPointError(f"loss became {losses['loss'].item()} at iteration {step}; lower the lr")
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        if cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        step += 1
        running.append(losses["loss"].item())
        bar.update(1)
        bar.set_postfix(loss=f"{running[-1]:.3f}", lr=f"{lr:.2e}")
        if step % cfg["log_interval"] == 0 or step == cfg["iters"]:
            _log(metrics_file, {"iter": step, "lr": lr, "loss": sum(running) / len(running),
                                "time_s": round(time.time() - t0, 1), "cpu_s": round(time.process_time() - c0, 1)})
            running = []
        if step % cfg["eval_interval"] == 0 or step == cfg["iters"]:
            atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                               "rng": torch.get_rng_state(), "config": cfg}, out / "last.pth")
            if cfg.get("stop_after") and step >= cfg["stop_after"]:
                bar.close()
                return None  # a chunk of a longer run: continue it with resume=True
            if step < cfg["iters"]:
                r = evaluate(model, val_set, cfg["mode"], cfg["crop_size"] if cfg["mode"] == "slide" else None,
                             cfg["stride"])
                _log(metrics_file, {"iter": step, "mIoU": r["mIoU"], "mAcc": r["mAcc"], "aAcc": r["aAcc"]})
                model.train()
    bar.close()
    model.eval()
    result = evaluate(model, val_set, cfg["mode"], cfg["crop_size"] if cfg["mode"] == "slide" else None,
                      cfg["stride"], overlay_dir=out / "overlays", num_overlays=cfg["overlays"])
    _log(metrics_file, {"iter": step, "mIoU": result["mIoU"], "mAcc": result["mAcc"], "aAcc": result["aAcc"]})
    model.save_pretrained(out / "model", label_names=val_set.class_names)
    atomic_write_json(out / "eval.json", {**result, "iters": step, "wall_s": round(time.time() - t0, 1),
                                          "cpu_s": round(time.process_time() - c0, 1), "threads": torch.get_num_threads()})
    atomic_write_text(out / "per_class.txt", format_table(result) + "\n")
    _plot(metrics_file, out / "curves.png")
    return result


def _plot(metrics_file: Path, path: Path) -> None:
    """Loss and mIoU against iterations."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    evals = [r for r in records if "mIoU" in r and not math.isnan(r["mIoU"])]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot([r["iter"] for r in train], [r["loss"] for r in train])
    ax[0].set(xlabel="iteration", ylabel="train loss")
    ax[1].plot([r["iter"] for r in evals], [100 * r["mIoU"] for r in evals], marker="o")
    ax[1].set(xlabel="iteration", ylabel="val mIoU (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""EsViT / DINO pretraining loop: multi-crop student, EMA teacher, view (+ region) loss.

One function, :func:`pretrain`, runs on a laptop CPU or under ``torchrun`` (DDP; gloo on CPU,
NCCL on GPU). Per-iteration schedules set LR (linear warm-up, cosine), weight decay (0.04 -> 0.4)
and teacher momentum (0.996 -> 1); the last layer of the heads is frozen for the first epoch;
gradients are clipped per parameter; a bf16/fp16 step that produces a non-finite loss is redone
in fp32 and autocast stays off afterwards. Every epoch writes ``checkpoint.pth`` atomically in the
official layout (``student`` with ``module.`` keys, ``teacher``, ``optimizer``, ``epoch``,
``dino_loss`` centres, ``fp16_scaler``, ``args``) and a line to ``metrics.jsonl`` (loss parts,
collapse diagnostics and, when labels exist, k-NN accuracy of the teacher).

Randomness (data order, crops, drop-path) is drawn from generators seeded by (seed, epoch, rank),
so ``resume`` continues bit-exactly from the last finished epoch.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

import vitlab
from vitlab.checkpoints.atomic import atomic_torch_save, atomic_write_text
from vitlab.data.multicrop import MultiCropAugmentation, MultiCropConfig
from vitlab.heads.dino import cancel_last_layer_gradients
from vitlab.ssl.data import ImageSet, load_image_set
from vitlab.ssl.esvit import (EsViTLoss, build_esvit_network, cosine_schedule, ema_update, multicrop_forward)
from vitlab.ssl.knn import extract_features, knn_accuracy
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class PretrainConfig:
    model: str = "swin_micro"
    model_kwargs: dict = field(default_factory=dict)
    data: str = "animal-mnist"
    output: str = "runs/esvit"
    epochs: int = 10
    batch_size: int = 64                 # per process
    lr: float = 5e-4                     # at a total batch of 256 (scaled linearly)
    min_lr: float = 1e-6
    warmup_epochs: int = 1
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    momentum_teacher: float = 0.996
    momentum_teacher_end: float = 1.0    # the cosine schedule's end value (DINO / EsViT: 1)
    out_dim: int = 65536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    norm_last_layer: bool = True
    use_bn_in_head: bool = False         # BatchNorm in the heads' MLP (DINO's use_bn_in_head)
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.07
    warmup_teacher_temp_epochs: int = 0
    student_temp: float = 0.1
    center_momentum: float = 0.9
    centering: str = "ema"               # ema (DINO / EsViT) | sinkhorn (SwAV / DINOv2 teacher targets)
    freeze_last_layer: int = 1
    clip_grad: float = 3.0
    loss: str = "view+region"            # or "view"
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple = (0.4, 1.0)
    local_scale: tuple = (0.05, 0.4)
    drop_path_rate: float = 0.1
    amp: str = "none"                    # none | bf16 | fp16
    knn_every: int = 1                   # epochs; 0 = never
    knn_k: int = 20
    knn_temperature: float = 0.07
    held_out: int = 2000
    seed: int = 0
    save_every: int = 0                  # also keep checkpoint{epoch:04d}.pth every N epochs
    max_iters_per_epoch: int = 0         # 0 = the whole data set
    stop_after: int = 0                  # stop after this many epochs in this run (schedules still span `epochs`)
    device: str = "auto"
    figures: bool = True                 # region-match and attention PNGs at the end


# Settings for small, low-resolution data sets (e.g. Animal-MNIST: 8k images at 32 px, a few CPU-minutes).
# The paper's recipe (K=65536, teacher momentum 0.996 -> 1, weight decay 0.04 -> 0.4, last layer frozen
# for an epoch, LR 5e-4 per 256 images) is tuned for 1.28M images and hundreds of thousands of steps;
# over a few thousand steps it leaves the teacher nearly frozen and the student barely moved.
# No local crops: at 32 px a 16-px crop of a small object is mostly one flat patch, the student cannot
# predict the global view from it and the teacher collapses to a uniform output (README, EsViT).
SMALL_DATA_PRESET = dict(
    global_size=32, local_size=16, n_local=0, local_scale=(0.1, 0.4), drop_path_rate=0.0,
    out_dim=1024, head_hidden_dim=256, head_bottleneck_dim=64,
    lr=4e-3, min_lr=1e-5, warmup_epochs=1, weight_decay=0.04, weight_decay_end=0.04,
    momentum_teacher=0.99, teacher_temp=0.04, warmup_teacher_temp_epochs=0, freeze_last_layer=0,
)
PRESETS = {"paper": {}, "small": SMALL_DATA_PRESET}


def _log(msg: str, rank: int = 0) -> None:
    if rank == 0:
        print(msg, flush=True)


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """Join the torchrun process group when launched by torchrun; returns (rank, world, device)."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device == "cuda":
            local = int(os.environ.get("LOCAL_RANK", 0))
            torch.cuda.set_device(local)
            return rank, world, torch.device("cuda", local)
        return rank, world, torch.device(device)
    return 0, 1, torch.device(device)


class MultiCropWrapper(nn.Module):
    """``forward(crops)`` = :func:`multicrop_forward` on ``backbone`` (so DDP sees the forward pass)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, crops):
        return multicrop_forward(self.backbone, crops)


def build_networks(cfg: PretrainConfig, in_chans: int):
    kwargs = {**cfg.model_kwargs, "num_classes": 0, "in_chans": in_chans, "img_size": cfg.global_size}
    dense = cfg.loss == "view+region"
    heads = dict(out_dim=cfg.out_dim, hidden_dim=cfg.head_hidden_dim, bottleneck_dim=cfg.head_bottleneck_dim,
                 use_bn=cfg.use_bn_in_head, dense_head=dense)
    student = build_esvit_network(vitlab.create_model(cfg.model, drop_path_rate=cfg.drop_path_rate, **kwargs),
                                  norm_last_layer=cfg.norm_last_layer, **heads)
    teacher = build_esvit_network(vitlab.create_model(cfg.model, drop_path_rate=0.0, **kwargs),
                                  norm_last_layer=True, **heads)
    teacher.load_state_dict(student.state_dict())
    for p in teacher.parameters():
        p.requires_grad = False
    return student, teacher


def param_groups(model: nn.Module) -> list[dict]:
    """DINO's rule: biases and 1-D tensors (norms) get no weight decay."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name.endswith(".bias") or p.ndim == 1 else decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def clip_gradients(model: nn.Module, clip: float) -> None:
    """Per-parameter gradient-norm clipping (DINO's ``clip_gradients``)."""
    for p in model.parameters():
        if p.grad is not None:
            norm = p.grad.norm(2)
            p.grad.mul_(torch.clamp(clip / (norm + 1e-6), max=1.0))


def official_checkpoint(student: nn.Module, teacher: nn.Module, optimizer, criterion: EsViTLoss, epoch: int,
                        cfg: PretrainConfig, scaler=None, extra: dict | None = None) -> dict:
    ckpt = {"student": {f"module.{k}": v for k, v in student.state_dict().items()},
            "teacher": teacher.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
            "args": json.loads(json.dumps(asdict(cfg))), "dino_loss": criterion.state_dict()}
    if scaler is not None:
        ckpt["fp16_scaler"] = scaler.state_dict()
    ckpt.update(extra or {})
    return ckpt


def evaluate_knn(teacher: nn.Module, data: ImageSet, cfg: PretrainConfig, mean, std) -> dict | None:
    if data.labels is None or len(data.held_out_idx) == 0:
        return None
    bank = extract_features(teacher, data.images[data.train_idx], cfg.global_size, mean, std)
    queries = extract_features(teacher, data.images[data.held_out_idx], cfg.global_size, mean, std)
    return knn_accuracy(bank, data.labels[data.train_idx], queries, data.labels[data.held_out_idx],
                        cfg.knn_k, cfg.knn_temperature)


def pretrain(cfg: PretrainConfig, resume: bool = False, data: ImageSet | None = None) -> dict:
    """Run (or resume) pretraining; returns the last epoch's metrics."""
    if cfg.loss not in ("view", "view+region"):
        raise ValueError(f"loss must be 'view' or 'view+region', got {cfg.loss!r}")
    if cfg.centering not in ("ema", "sinkhorn"):
        raise ValueError(f"centering must be 'ema' (DINO / EsViT) or 'sinkhorn' (SwAV / DINOv2), got {cfg.centering!r}")
    rank, world, device = init_distributed(cfg.device)
    out = Path(cfg.output)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    data = data or load_image_set(cfg.data, size=round(cfg.global_size * 1.15), held_out=cfg.held_out, seed=cfg.seed)
    mean, std = ((0.5,), (0.5,)) if data.channels == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    torch.manual_seed(cfg.seed)
    student, teacher = build_networks(cfg, data.channels)
    student.to(device)
    teacher.to(device).train()  # as in DINO: BatchNorm in a head (use_bn_in_head) uses batch statistics
    wrapped = MultiCropWrapper(student)
    if world > 1:
        wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    aug = MultiCropAugmentation(MultiCropConfig(
        global_size=cfg.global_size, local_size=cfg.local_size, n_local=cfg.n_local,
        global_scale=tuple(cfg.global_scale), local_scale=tuple(cfg.local_scale), mean=mean, std=std))
    ncrops = 2 + cfg.n_local
    criterion = EsViTLoss(cfg.out_dim, ncrops, cfg.warmup_teacher_temp, cfg.teacher_temp,
                          cfg.warmup_teacher_temp_epochs, cfg.epochs, cfg.student_temp, cfg.center_momentum,
                          region_weight=0.5 if cfg.loss == "view+region" else 0.0,
                          centering=cfg.centering).to(device)
    if cfg.loss == "view":
        criterion.view_weight = 1.0  # DINO: the view loss alone, at full weight
    optimizer = torch.optim.AdamW(param_groups(student), lr=0.0)
    use_fp16 = cfg.amp == "fp16"
    scaler = torch.amp.GradScaler(device.type) if use_fp16 else None
    amp_dtype = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]

    train_idx = data.train_idx
    per_rank = len(train_idx) // world
    ipe = per_rank // cfg.batch_size
    if cfg.max_iters_per_epoch:
        ipe = min(ipe, cfg.max_iters_per_epoch)
    if ipe < 1:
        raise ValueError(f"{len(train_idx)} training images are fewer than one batch of {cfg.batch_size} "
                         f"per process ({world} processes)")
    lr_sched = cosine_schedule(cfg.lr * cfg.batch_size * world / 256.0, cfg.min_lr, cfg.epochs, ipe,
                               cfg.warmup_epochs)
    wd_sched = cosine_schedule(cfg.weight_decay, cfg.weight_decay_end, cfg.epochs, ipe)
    mom_sched = cosine_schedule(cfg.momentum_teacher, cfg.momentum_teacher_end, cfg.epochs, ipe)

    start_epoch, amp_off = 0, False
    ckpt_path = out / "checkpoint.pth"
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        student.load_state_dict({k.removeprefix("module."): v for k, v in ckpt["student"].items()})
        teacher.load_state_dict(ckpt["teacher"])
        optimizer.load_state_dict(ckpt["optimizer"])
        criterion.load_state_dict(ckpt["dino_loss"])
        if scaler is not None and "fp16_scaler" in ckpt:
            scaler.load_state_dict(ckpt["fp16_scaler"])
        start_epoch, amp_off = int(ckpt["epoch"]), bool(ckpt.get("amp_disabled", False))
        _log(f"resumed from {ckpt_path} at epoch {start_epoch}", rank)
    if rank == 0:
        atomic_write_text(out / "config.yaml", _yaml(asdict(cfg)))

    metrics = {}
    end_epoch = min(cfg.epochs, start_epoch + cfg.stop_after) if cfg.stop_after else cfg.epochs
    for epoch in range(start_epoch, end_epoch):
        t0 = time.time()
        order_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        aug_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch * 7919 + rank + 1)
        torch.manual_seed(cfg.seed * 1_000_003 + epoch * 104_729 + rank)   # drop-path
        perm = train_idx[torch.randperm(len(train_idx), generator=order_gen)][rank * per_rank:(rank + 1) * per_rank]
        student.train()
        sums: dict[str, float] = {}
        for it in range(ipe):
            step = epoch * ipe + it
            for i, group in enumerate(optimizer.param_groups):
                group["lr"] = float(lr_sched[step])
                if i == 0:
                    group["weight_decay"] = float(wd_sched[step])
            idx = perm[it * cfg.batch_size:(it + 1) * cfg.batch_size]
            crops = [c.to(device, non_blocking=True) for c in aug(data.floats(idx), aug_gen)]
            loss = None
            for precision in ((amp_dtype, None) if amp_dtype is not None and not amp_off else (None,)):
                with torch.autocast(device.type, dtype=precision, enabled=precision is not None):
                    with torch.no_grad():
                        teacher_out = multicrop_forward(teacher, crops[:2])
                    student_out = wrapped(crops)
                    loss = criterion([t.float() if torch.is_tensor(t) else t for t in student_out],
                                     [t.float() if torch.is_tensor(t) else t for t in teacher_out], epoch)
                if math.isfinite(float(loss.detach())):
                    break
                if precision is not None:
                    _log(f"epoch {epoch} iter {it}: non-finite loss under {cfg.amp} autocast; redoing the step in "
                         f"fp32 and keeping autocast off from now on", rank)
                    amp_off = True
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"loss is {float(loss.detach())} at epoch {epoch} iteration {it} even in fp32; "
                                         f"stopping (lower --lr or raise --clip-grad)")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None and not amp_off:
                scaler.scale(loss).backward()
                scaler.unscale_(optimizer)
            else:
                loss.backward()
            if cfg.clip_grad:
                clip_gradients(student, cfg.clip_grad)
            if epoch < cfg.freeze_last_layer:
                cancel_last_layer_gradients(student)
            if scaler is not None and not amp_off:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            ema_update(teacher, student, float(mom_sched[step]))
            parts = {"loss": float(loss.detach()), **criterion.last}
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
        metrics = {"epoch": epoch + 1, **{k: v / ipe for k, v in sums.items()}, "lr": float(lr_sched[step]),
                   "weight_decay": float(wd_sched[step]), "momentum": float(mom_sched[step]),
                   "teacher_temp": criterion.teacher_temperature(epoch), "iters": ipe,
                   "param_norm": float(torch.sqrt(sum((p.detach().double() ** 2).sum() for p in student.parameters()))),
                   "epoch_seconds": round(time.time() - t0, 2)}
        if rank == 0 and cfg.knn_every and ((epoch + 1) % cfg.knn_every == 0 or epoch + 1 == cfg.epochs):
            knn = evaluate_knn(teacher, data, cfg, mean, std)
            if knn is not None:
                metrics.update({f"knn_{k}": v for k, v in knn.items()})
        if rank == 0:
            ckpt = official_checkpoint(student, teacher, optimizer, criterion, epoch + 1, cfg, scaler,
                                       {"amp_disabled": amp_off, "mean": list(mean), "std": list(std),
                                        "in_chans": data.channels})
            atomic_torch_save(ckpt, ckpt_path)
            if cfg.save_every and (epoch + 1) % cfg.save_every == 0:
                atomic_torch_save(ckpt, out / f"checkpoint{epoch + 1:04d}.pth")
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            _log(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()), rank)
    if rank == 0 and metrics and cfg.figures:
        write_figures(teacher, data, aug, out / "figures", cfg.seed)
    if world > 1:
        dist.barrier()
    return metrics


def write_figures(teacher: nn.Module, data: ImageSet, aug: MultiCropAugmentation, folder: Path, seed: int) -> None:
    """Region-correspondence and attention pictures of the teacher for one image (PNG)."""
    from vitlab.ssl.data import eval_batch
    from vitlab.ssl.visualize import attention_figure, region_correspondence_figure
    folder.mkdir(parents=True, exist_ok=True)
    idx = (data.held_out_idx if len(data.held_out_idx) else data.train_idx)[:1]
    device = next(teacher.parameters()).device
    views = aug(data.floats(idx), torch.Generator().manual_seed(seed))
    cfg = aug.cfg
    region_correspondence_figure(teacher, views[0].to(device), views[1].to(device), folder / "region_matches.png",
                                 cfg.mean, cfg.std)
    whole = eval_batch(data.images[idx], cfg.global_size, cfg.mean, cfg.std, data.channels).to(device)
    attention_figure(teacher, whole, folder / "attention.png", cfg.mean, cfg.std)


def _yaml(d: dict) -> str:
    import yaml
    return yaml.safe_dump(json.loads(json.dumps(d)), sort_keys=False)

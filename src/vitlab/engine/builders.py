"""Build what a run needs from its configuration: model, transforms, datasets, loaders."""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader

from vitlab.data.folder import collate_skipping
from vitlab.data.registry import DataRequest, DatasetBundle, build_dataset, parse_data_spec
from vitlab.data.sampler import SeededSampler, ShardSampler
from vitlab.data.transforms import build_eval_transform, build_train_transform

from .distributed import DistInfo
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD


def probe_pretrained_cfg(name: str, kwargs: dict) -> dict:
    """The model's preprocessing config, built on the meta device (no memory, no init cost)."""
    from vitlab.models.registry import create_model
    with torch.device("meta"):
        return dict(create_model(name, **kwargs).pretrained_cfg)


def _repeat(stats, n):
    stats = tuple(stats)
    return stats if len(stats) == n else tuple(sum(stats) / len(stats) for _ in range(n))


def build_data(cfg: dict, splits=("train", "val"), pretrained_cfg: dict | None = None) -> tuple[DatasetBundle, dict]:
    """Datasets with transforms; returns (bundle, resolved input settings)."""
    mcfg, dcfg, acfg = cfg["model"], cfg["data"], cfg["aug"]
    kwargs = dict(mcfg.get("kwargs") or {})
    if dcfg.get("img_size") and "img_size" not in kwargs:
        kwargs["img_size"] = dcfg["img_size"]
    pre = pretrained_cfg or probe_pretrained_cfg(mcfg["name"], kwargs)
    input_size = tuple(pre.get("input_size", (3, 224, 224)))
    in_chans = int(kwargs.get("in_chans", input_size[0]))
    img_size = int(dcfg.get("img_size") or input_size[-1])
    mean, std = _repeat(pre.get("mean", IMAGENET_MEAN), in_chans), _repeat(pre.get("std", IMAGENET_STD), in_chans)
    train_t = build_train_transform(img_size, mean, std, in_chans, scale=acfg["scale"], ratio=acfg["ratio"],
                                    hflip=acfg["hflip"], color_jitter=acfg["color_jitter"],
                                    auto_augment=acfg["auto_augment"], reprob=acfg["reprob"], remode=acfg["remode"],
                                    recount=acfg["recount"], interpolation=acfg["interpolation"])
    eval_t = build_eval_transform({**pre, "input_size": (in_chans, img_size, img_size)}, in_chans, mean, std,
                                  img_size, acfg.get("crop_pct"))
    name, root = parse_data_spec(dcfg["name"])
    request = DataRequest(name=name, root=root or dcfg.get("root"), input_size=(in_chans, img_size, img_size),
                          train_transform=train_t, eval_transform=eval_t, seed=int(cfg["run"]["seed"]),
                          splits=tuple(splits), options=dict(dcfg.get("options") or {}))
    bundle = build_dataset(request)
    if bundle.mean is not None and bundle.std is not None:
        mean, std = _repeat(bundle.mean, in_chans), _repeat(bundle.std, in_chans)
        for t in (train_t, eval_t):
            t.set_normalization(mean, std)
    resolved = {"img_size": img_size, "in_chans": in_chans, "mean": list(mean), "std": list(std),
                "model_kwargs": kwargs}
    return bundle, resolved


def build_model(cfg: dict, num_classes: int, kwargs: dict):
    from vitlab.models.registry import create_model
    mcfg = cfg["model"]
    kwargs = dict(kwargs)
    if mcfg.get("drop_path") is not None:
        kwargs["drop_path_rate"] = mcfg["drop_path"]
    if cfg["aug"].get("mix_token"):
        kwargs["mix_token"] = True
    model = create_model(mcfg["name"], num_classes=num_classes, **kwargs)
    if mcfg.get("pretrained"):
        from vitlab.checkpoints.load import load_checkpoint
        report = load_checkpoint(model, mcfg["pretrained"], strict=False, drop_classifier=True)
        print(f"initialised from {mcfg['pretrained']}: {report}")
    if mcfg.get("freeze_bn"):
        from vitlab.layers import freeze_batch_norm
        model = freeze_batch_norm(model)
    if mcfg.get("grad_checkpointing"):
        model.set_grad_checkpointing(True)
    return model


def _worker_init(worker_id: int) -> None:
    import random

    import numpy as np
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def train_loader(dataset, cfg: dict, dist_info: DistInfo) -> tuple[DataLoader, SeededSampler]:
    dcfg = cfg["data"]
    bs, accum = int(dcfg["batch_size"]), int(cfg["optim"]["accum_steps"])
    sampler = SeededSampler(len(dataset), shuffle=True, seed=int(cfg["run"]["seed"]), rank=dist_info.rank,
                            world_size=dist_info.world_size, drop_last=True, batch_size=bs * accum,
                            keys_only=not getattr(dataset, "seeded", False))
    g = torch.Generator()
    g.manual_seed(int(cfg["run"]["seed"]))  # keeps the loader from drawing on the global RNG (exact resume)
    workers = int(dcfg["workers"])
    loader = DataLoader(dataset, batch_size=bs, sampler=sampler, num_workers=workers, collate_fn=collate_skipping,
                        drop_last=True, worker_init_fn=_worker_init, generator=g,
                        persistent_workers=False, pin_memory=torch.cuda.is_available())
    return loader, sampler


def eval_loader(dataset, batch_size: int, workers: int, dist_info: DistInfo) -> DataLoader:
    sampler = ShardSampler(len(dataset), dist_info.rank, dist_info.world_size)
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_skipping, generator=g, worker_init_fn=_worker_init)


def resolve_device(name: str, dist_info: DistInfo) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available")
        return torch.device("cuda", dist_info.local_rank)
    return torch.device(name)


def set_threads(threads) -> None:
    if threads:
        torch.set_num_threads(int(threads))
    elif os.environ.get("OMP_NUM_THREADS") is None and torch.get_num_threads() > (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count() or 1)

"""Frozen backbones for the self-supervised evaluators (``vitlab knn``, ``vitlab linear-probe``).

:func:`load_backbone` takes what a user has: a ``vitlab pretrain`` run folder (its ``model/`` is the
teacher backbone), a model folder, a training state (``last.pth``: the teacher is read by default,
as EsViT's evaluation does), an official EsViT checkpoint (then ``model`` names the architecture), or
just a model name (random initialisation, a baseline). It returns the backbone with the
preprocessing its features expect, and :func:`eval_datasets` reads a labelled set's bank (training
split) and queries (held-out split, ``val/`` for folders) with that preprocessing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import vitlab
from vitlab.checkpoints.load import read_checkpoint_object
from vitlab.errors import DataError
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class BackboneInfo:
    backbone: nn.Module
    img_size: int
    mean: tuple
    std: tuple
    in_chans: int
    crop_pct: float
    source: str


def _from_folder(path: Path, img_size: int | None) -> BackboneInfo:
    backbone = vitlab.from_pretrained(path, **({"img_size": img_size} if img_size else {}))
    pre = backbone.pretrained_cfg
    size = tuple(pre.get("input_size", (3, 224, 224)))
    in_chans = int(getattr(backbone, "model_kwargs", {}).get("in_chans") or size[0])
    return BackboneInfo(backbone, int(img_size or size[-1]), tuple(pre.get("mean", IMAGENET_MEAN)),
                        tuple(pre.get("std", IMAGENET_STD)), in_chans, float(pre.get("crop_pct", 0.875)), str(path))


def load_backbone(model: str | None = None, checkpoint: str | None = None, which: str = "teacher",
                  model_kwargs: dict | None = None, img_size: int | None = None, in_chans: int | None = None,
                  seed: int = 0) -> BackboneInfo:
    """A frozen backbone (no classifier, eval mode) from a folder, a checkpoint or a name (see the module docstring)."""
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    if model and Path(model).is_dir() and not checkpoint:
        return _from_folder(Path(model), img_size)
    obj = read_checkpoint_object(checkpoint) if checkpoint else {}
    meta = obj.get("meta", {}) if isinstance(obj, dict) else {}
    stats = obj.get("esvit_data", {}) if isinstance(obj, dict) else {}
    name = model or meta.get("model_name")
    if not name:
        raise ValueError("this checkpoint does not say which model it holds: pass --model (e.g. swin_tiny)")
    kwargs = {k: v for k, v in meta.get("model_kwargs", {}).items() if k not in ("drop_path_rate",)}
    kwargs.update(model_kwargs or {})
    kwargs.update(num_classes=0, img_size=img_size or kwargs.get("img_size") or stats.get("global_size") or 224,
                  in_chans=in_chans or kwargs.get("in_chans") or stats.get("in_chans") or 3)
    torch.manual_seed(seed)
    backbone = vitlab.create_model(name, **kwargs)
    source = "random initialisation"
    if checkpoint:
        report = vitlab.load_checkpoint(backbone, obj, strict=False, prefer=which)
        heads = [k for k in report.unexpected if not k.startswith(("head.", "head_dense."))]
        if report.missing or heads:
            raise vitlab.CheckpointError(f"{checkpoint} does not hold a {name} backbone: {report}")
        source = f"{checkpoint} ({report.wrapper or 'weights'})"
    mean = tuple(stats.get("mean", IMAGENET_MEAN))
    std = tuple(stats.get("std", IMAGENET_STD))
    return BackboneInfo(backbone.eval(), int(kwargs["img_size"]), mean, std, int(kwargs["in_chans"]),
                        float(stats.get("eval_crop_pct", 0.875)), source)


def eval_datasets(data: str, info: BackboneInfo, options: dict | None = None, seed: int = 0, pixels: bool = False):
    """(bank, queries, class names) of a labelled dataset, preprocessed for ``info``'s backbone (``pixels``:
    no normalisation, for the raw-pixel baseline)."""
    from vitlab.data.registry import DataRequest, build_dataset, parse_data_spec
    from vitlab.data.transforms import build_eval_transform
    size = info.img_size
    mean, std = ((0.0,) * info.in_chans, (1.0,) * info.in_chans) if pixels else (info.mean, info.std)
    t = build_eval_transform({"input_size": (info.in_chans, size, size), "crop_pct": info.crop_pct,
                              "interpolation": "bicubic"}, info.in_chans, mean, std)
    name, root = parse_data_spec(data)
    bundle = build_dataset(DataRequest(name, root=root, input_size=(info.in_chans, size, size), train_transform=t,
                                       eval_transform=t, seed=seed, options=dict(options or {})))
    if not bundle.labelled or bundle.train is None or bundle.val is None:
        raise DataError(f"{data} has no labelled train and held-out splits (k-NN and the linear probe need one "
                        f"sub-folder per class, and PATH/train + PATH/val or a built-in set)")
    return bundle.train, bundle.val, list(bundle.class_names)


def baseline_backbones(info: BackboneInfo, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """The references a frozen-feature score needs beside it: the same architecture at random initialisation
    and raw pixels as tokens (each token = its stride x stride patch, the stride of the last feature map)."""
    from vitlab.ssl.dense_probe import PixelTokens
    from vitlab.ssl.region_tokens import final_stride
    name = getattr(info.backbone, "model_name", None)
    kwargs = {k: v for k, v in getattr(info.backbone, "model_kwargs", {}).items() if k != "drop_path_rate"}
    random = load_backbone(name, None, model_kwargs=kwargs, img_size=info.img_size, in_chans=info.in_chans, seed=seed)
    stride = final_stride(info.backbone)
    return [(f"{name} at random init", random.backbone), (f"raw pixels ({stride}x{stride} patches)",
                                                          PixelTokens(stride))]

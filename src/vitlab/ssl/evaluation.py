"""Frozen-backbone evaluation helpers shared by ``vitlab knn`` and ``vitlab linear-probe``.

:func:`load_backbone` rebuilds the backbone of a checkpoint written by ``vitlab pretrain`` (its
``args`` name the model) or of an official EsViT checkpoint (give ``model``), loading the teacher
by default, as EsViT's evaluation does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

import vitlab
from vitlab.checkpoints.load import read_checkpoint_object
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD


@dataclass
class BackboneInfo:
    backbone: nn.Module
    img_size: int
    mean: tuple
    std: tuple
    in_chans: int
    source: str


def load_backbone(checkpoint: str | None, which: str = "teacher", model: str | None = None,
                  model_kwargs: dict | None = None, img_size: int | None = None, in_chans: int | None = None,
                  seed: int = 0) -> BackboneInfo:
    """Backbone (classifier removed) from a pretraining checkpoint, or randomly initialised without one."""
    obj = read_checkpoint_object(checkpoint) if checkpoint else {}
    args = obj.get("args", {}) if isinstance(obj, dict) and isinstance(obj.get("args"), dict) else {}
    name = model or args.get("model")
    if not name:
        raise ValueError("this checkpoint does not say which model it holds: pass --model (e.g. swin_tiny)")
    kwargs = {**args.get("model_kwargs", {}), **(model_kwargs or {})}
    size = img_size or args.get("global_size") or 224
    chans = in_chans or obj.get("in_chans") or 3
    mean = tuple(obj.get("mean", IMAGENET_MEAN))
    std = tuple(obj.get("std", IMAGENET_STD))
    torch.manual_seed(seed)
    backbone = vitlab.create_model(name, num_classes=0, img_size=size, in_chans=chans, **kwargs)
    if checkpoint:
        if which not in ("teacher", "student"):
            raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
        report = vitlab.load_checkpoint(backbone, obj, strict=True, prefer=which)
        source = f"{checkpoint} ({report.wrapper or 'weights'})"
    else:
        source = "random initialisation"
    return BackboneInfo(backbone.eval(), size, mean, std, chans, source)

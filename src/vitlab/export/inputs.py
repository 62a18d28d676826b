"""What to feed a model when exporting or counting: example inputs of the size it expects."""
from __future__ import annotations

import torch
from torch import nn


def is_video_model(model: nn.Module) -> bool:
    """True for models that take (B, C, T, H, W) clips (``pretrained_cfg['input_size']`` has 4 entries)."""
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", ()))
    return len(size) == 4


def default_sizes(model: nn.Module) -> tuple[int, int, int | None]:
    """(in_chans, image side, frames or None) from the model's ``pretrained_cfg``."""
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", ()))
    if len(size) == 4:
        return int(size[0]), int(size[-1]), int(size[1])
    if len(size) == 3:
        return int(size[0]), int(size[-1]), None
    return int(getattr(model, "in_chans", 3)), int(getattr(model, "img_size", 224)), None


def default_shape(model: nn.Module) -> tuple[int, int, int, int | None]:
    """(in_chans, height, width, frames or None): ``default_sizes`` keeping non-square inputs (pose crops, detectors)."""
    chans, side, clip = default_sizes(model)
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", ()))
    height = int(size[-2]) if len(size) >= 3 else side
    return chans, height, side, clip


def size_overrides(model: nn.Module, img: int | None, frames: int | None) -> dict:
    """Constructor overrides (``img_size``, ``num_frames``) to rebuild ``model`` for another input size."""
    _, side, clip = default_sizes(model)
    overrides = {}
    if img and img != side:
        overrides["img_size"] = img
    if frames and clip is not None and frames != clip:
        overrides["num_frames"] = frames
    return overrides


def example_inputs(model: nn.Module, batch: int = 2, img: int | None = None, frames: int | None = None,
                   generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                   hw: tuple[int, int] | None = None) -> tuple[torch.Tensor]:
    """A random input batch of the size the model expects: (B, C, H, W), or (B, C, T, H, W) for video models.

    ``img`` asks for a square side, ``hw`` for (height, width); by default the model's own ``input_size``.
    """
    chans, height, width, clip = default_shape(model)
    if img:
        height = width = img
    if hw:
        height, width = (int(v) for v in hw)
    if frames is not None and clip is None:
        raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} takes images, not clips: "
                         f"drop --frames")
    shape = (batch, chans, frames or clip, height, width) if clip is not None else (batch, chans, height, width)
    return (torch.randn(shape, generator=generator, device=device),)

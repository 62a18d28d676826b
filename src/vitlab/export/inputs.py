"""What to feed a model when exporting or counting: the model (by name or saved folder) and example inputs."""
from __future__ import annotations

import os
from pathlib import Path

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
                   generator: torch.Generator | None = None, device: str | torch.device = "cpu") -> tuple[torch.Tensor]:
    """A random input batch of the size the model expects: (B, C, S, S), or (B, C, T, S, S) for video models."""
    chans, side, clip = default_sizes(model)
    side = img or side
    if frames is not None and clip is None:
        raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} takes images, not clips: "
                         f"drop --frames")
    shape = (batch, chans, frames or clip, side, side) if clip is not None else (batch, chans, side, side)
    return (torch.randn(shape, generator=generator, device=device),)


def load_model(spec: str | os.PathLike, checkpoint: str | os.PathLike | None = None, **overrides) -> nn.Module:
    """A model from a registered name or a saved model folder (``config.json`` + ``model.safetensors``).

    ``checkpoint`` loads other weights on top (strict). Overrides go to ``create_model``.
    """
    from vitlab.checkpoints.hub import CONFIG_NAME, from_pretrained
    from vitlab.checkpoints.load import load_checkpoint
    from vitlab.models.registry import create_model
    path = Path(spec)
    if path.is_dir():
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{spec} is a folder but not a vitlab model folder ({CONFIG_NAME} missing); "
                                    f"pass a model name or a folder written by save_pretrained")
        model = from_pretrained(path, **overrides)
    else:
        model = create_model(str(spec), **overrides)
    if checkpoint:
        load_checkpoint(model, checkpoint, strict=True)
    return model.eval()

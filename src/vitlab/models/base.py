"""The contract every vitlab backbone fulfils (see DESIGN.md, "The API").

Subclasses implement ``forward_features``, ``forward_head``, ``forward_intermediates`` and
``reset_classifier``, and set ``num_features``, ``feature_info`` and ``pretrained_cfg``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_pretrained_cfg(img_size: int = 224, num_classes: int = 1000, crop_pct: float = 0.875,
                           interpolation: str = "bicubic", **extra) -> dict[str, Any]:
    """Preprocessing that goes with a set of weights, in timm's ``pretrained_cfg`` vocabulary."""
    return {"input_size": (3, img_size, img_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "crop_pct": crop_pct, "interpolation": interpolation, "num_classes": num_classes, **extra}


class VitlabModel(nn.Module):
    """Base class: shared API surface (grad checkpointing, weight-decay exclusions, saving)."""

    num_features: int = 0
    feature_info: list[dict] = []
    pretrained_cfg: dict[str, Any] = {}

    def __init__(self):
        super().__init__()
        self.grad_checkpointing = False

    # --- API ---------------------------------------------------------------------------------
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return self.head

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward to save memory (``torch.utils.checkpoint``)."""
        self.grad_checkpointing = bool(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Parameter names that should get no weight decay (besides norms and biases)."""
        return set()

    @property
    def default_cfg(self) -> dict[str, Any]:  # timm's older name
        return self.pretrained_cfg

    def save_pretrained(self, directory, label_names: list[str] | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (see :mod:`vitlab.checkpoints.hub`)."""
        from vitlab.checkpoints.hub import save_pretrained
        save_pretrained(self, directory, label_names=label_names)

    # --- helpers for subclasses -----------------------------------------------------------------
    def _run_blocks(self, blocks, x: torch.Tensor) -> torch.Tensor:
        """Run a sequence of blocks, with activation checkpointing when enabled and training."""
        if self.grad_checkpointing and self.training and not torch.jit.is_scripting():
            from torch.utils.checkpoint import checkpoint
            for blk in blocks:
                x = checkpoint(blk, x, use_reentrant=False)
            return x
        for blk in blocks:
            x = blk(x)
        return x


def check_image_input(x: torch.Tensor, in_chans: int, name: str, multiple_of: int = 1,
                      expected_hw: tuple[int, int] | None = None) -> None:
    """Raise a readable error for an input that is not an (B, in_chans, H, W) image batch of valid size."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{name} expects input of shape (B, {in_chans}, H, W), got {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h % multiple_of or w % multiple_of:
        raise ValueError(f"{name} needs height and width divisible by {multiple_of}, got {h}x{w}")
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise ValueError(f"{name} was built for {expected_hw[0]}x{expected_hw[1]} inputs, got {h}x{w}")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point image tensor, got {x.dtype}")

"""The contract every vitlab backbone fulfils (see DESIGN.md, "The API").

Subclasses implement ``forward_features``, ``forward_head``, ``forward_intermediates`` and
``reset_classifier``, and set ``num_features``, ``feature_info`` and ``pretrained_cfg``.

Outputs, as in timm: ``forward(x)`` returns one logits tensor (B, K) in training and in eval mode
(for token-labeling models the released merge ``head(cls) + 0.5 * max_tokens(aux_head(tokens))``);
``forward_train(x)`` returns a :class:`TrainOutput` with everything a training loss reads
(the class-token logits alone, the per-token aux logits, the MixToken box).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def default_pretrained_cfg(img_size: int = 224, num_classes: int = 1000, crop_pct: float = 0.875,
                           interpolation: str = "bicubic", **extra) -> dict[str, Any]:
    """Preprocessing that goes with a set of weights, in timm's ``pretrained_cfg`` vocabulary."""
    return {"input_size": (3, img_size, img_size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
            "crop_pct": crop_pct, "interpolation": interpolation, "num_classes": num_classes, **extra}


class TrainOutput(NamedTuple):
    """What :meth:`VitlabModel.forward_train` returns, read by :func:`vitlab.engine.losses.classification_loss`.

    * ``logits``: class logits (B, K). For token-labeling models (VOLO, UniFormer with
      ``return_dense=True``) the class head alone, *not* merged with the aux head (``forward``
      returns the merged ones).
    * ``aux_logits``: per-token logits (B, N, K) of an auxiliary head, row-major over the aux token
      grid and aligned with each image's own tokens (after MixToken they are already un-mixed);
      light UniFormer gives its class-token head here, (B, 1, K). None without an aux head.
    * ``mix_box``: the MixToken box ``(y1, x1, y2, x2)`` (end-exclusive) on the aux token grid when
      MixToken mixed this batch (image ``i`` shows image ``B - 1 - i`` inside the box), else None.
    """

    logits: torch.Tensor
    aux_logits: torch.Tensor | None = None
    mix_box: tuple[int, int, int, int] | None = None


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
        """The features ``forward_head`` reads; each family's docstring gives the exact layout."""
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor):
        """Logits (B, K), the same computation in training and eval mode (no MixToken)."""
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """The outputs a training loss needs (see :class:`TrainOutput`); models with an aux head override it.

        The default is ``TrainOutput(self(x))``: the plain logits, no aux logits, no MixToken box.
        """
        return TrainOutput(self(x))

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

    def save_pretrained(self, directory, label_names: list[str] | None = None, dataset: dict | None = None) -> None:
        """Write ``config.json`` + ``model.safetensors`` to ``directory`` (see :mod:`vitlab.checkpoints.hub`)."""
        from vitlab.checkpoints.hub import save_pretrained
        save_pretrained(self, directory, label_names=label_names, dataset=dataset)

    # --- helpers for subclasses -----------------------------------------------------------------
    def _weight_dtype(self) -> torch.dtype | None:
        """The dtype of the weights (what inputs must match outside autocast)."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), None)

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


def check_batch_and_dtype(x: torch.Tensor, name: str, dtype: torch.dtype | None) -> None:
    """A readable error for an empty batch, a non-float input, or an input whose dtype differs from the weights'
    outside autocast (e.g. fp16 images into an fp32 model)."""
    if x.shape[0] == 0:
        raise ValueError(f"{name} got an empty batch (0 images, shape {tuple(x.shape)}); give it at least one")
    if not x.is_floating_point():
        raise TypeError(f"{name} expects a floating-point input, got {x.dtype}")
    if dtype is not None and x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} has {dtype} weights but got a {x.dtype} input: convert one to the other "
                        f"(x.to({dtype}) or model.to({x.dtype})), or run it under torch.autocast")


def check_image_input(x: torch.Tensor, in_chans: int, name: str, multiple_of: int = 1,
                      expected_hw: tuple[int, int] | None = None, dtype: torch.dtype | None = None) -> None:
    """Raise a readable error for an input that is not an (B, in_chans, H, W) image batch of valid size and type."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} expects a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != in_chans:
        raise ValueError(f"{name} expects input of shape (B, {in_chans}, H, W), got {tuple(x.shape)}")
    check_batch_and_dtype(x, name, dtype)
    h, w = x.shape[-2:]
    if h % multiple_of or w % multiple_of:
        raise ValueError(f"{name} needs height and width divisible by {multiple_of}, got {h}x{w}")
    if expected_hw is not None and (h, w) != tuple(expected_hw):
        raise ValueError(f"{name} was built for {expected_hw[0]}x{expected_hw[1]} inputs, got {h}x{w}")

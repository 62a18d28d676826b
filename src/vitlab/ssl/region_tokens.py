"""Region tokens of any backbone: its last feature map as (B, N, C) tokens on an (h, w) grid.

EsViT's region loss (arXiv 2106.09785, Sec. 3.2) works on the tokens of the final stage. Backbones
lay that map out differently (see each family's ``forward_features``):

* Swin: (B, N, C) tokens, no class token;
* Pale, UniFormer: (B, C, h, w) maps;
* VOLO, ViT: (B, P + N, C) with P class tokens first (none for VOLO without ``post_layers``).

:func:`split_features` turns one ``forward_features`` output into the view-level feature (the model's
own pooled pre-logits feature, ``forward_head(..., pre_logits=True)``: the mean of the final tokens for
Swin / Pale / UniFormer, the class token for VOLO / ViT) and the region tokens with their grid, so one
forward serves both losses and every evaluator sees the same tokens.
"""
from __future__ import annotations

import math

import torch
from torch import nn


def final_stride(backbone: nn.Module) -> int:
    """Reduction of the last feature map, from ``feature_info`` (32 for Swin-T / Pale-T / UniFormer-S)."""
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ValueError(f"{type(backbone).__name__} declares no feature_info: its region tokens cannot be located")
    return int(info[-1]["reduction"])


def token_grid(backbone: nn.Module, image_hw: tuple[int, int], num_tokens: int) -> tuple[int, int, int]:
    """``(h, w, prefix)`` of a (B, prefix + h*w, C) token sequence for an input of ``image_hw`` pixels.

    The grid is the input size over the final stride, rounded up (Swin pads odd maps) or down
    (strided convolutions); the rounding that leaves 0 or a few leading class tokens is taken."""
    r = final_stride(backbone)
    for rounding in (math.ceil, math.floor):
        h, w = (max(1, int(rounding(s / r))) for s in image_hw)
        prefix = num_tokens - h * w
        if 0 <= prefix <= 4:
            return h, w, prefix
    raise ValueError(f"{type(backbone).__name__}: {num_tokens} tokens do not form a grid of a "
                     f"{image_hw[0]}x{image_hw[1]} input at stride {r}")


def region_tokens(backbone: nn.Module, features: torch.Tensor, image_hw: tuple[int, int]):
    """``(tokens (B, N, C), (h, w))`` from a ``forward_features`` output (see the module docstring)."""
    if features.ndim == 4:
        b, c, h, w = features.shape
        return features.flatten(2).transpose(1, 2), (h, w)
    if features.ndim != 3:
        raise ValueError(f"forward_features gave a {features.ndim}-D tensor; region tokens need (B, N, C) tokens "
                         f"or a (B, C, h, w) map")
    h, w, prefix = token_grid(backbone, image_hw, features.shape[1])
    return features[:, prefix:], (h, w)


def split_features(backbone: nn.Module, x: torch.Tensor):
    """``(pooled (B, C), tokens (B, N, C), (h, w))`` of images ``x`` (B, C, H, W) in one forward."""
    features = backbone.forward_features(x)
    pooled = backbone.forward_head(features, pre_logits=True)
    tokens, grid = region_tokens(backbone, features, tuple(x.shape[-2:]))
    return pooled, tokens, grid


@torch.no_grad()
def dense_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) final-stage map of a frozen backbone (for the dense probe and correspondence)."""
    _, tokens, (h, w) = split_features(backbone, x)
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], h, w)

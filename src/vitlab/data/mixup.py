"""Mixup (arXiv 1710.09412), CutMix (arXiv 1905.04899) and label smoothing, on a batch.

Targets become soft (B, K) distributions. Randomness comes from a NumPy ``Generator`` the caller
seeds per step, so a resumed run draws the same mixes.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def smooth_one_hot(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """(B,) class indices -> (B, K) with ``1 - smoothing + smoothing/K`` on the class and ``smoothing/K`` elsewhere."""
    off = smoothing / num_classes
    out = torch.full((target.shape[0], num_classes), off, device=target.device)
    return out.scatter_(1, target.long().view(-1, 1), 1.0 - smoothing + off)


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Box of area ~(1 - lam) centred uniformly at random, clipped to the image: (y1, y2, x1, x2)."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    return (int(np.clip(cy - ch // 2, 0, h)), int(np.clip(cy + ch // 2, 0, h)),
            int(np.clip(cx - cw // 2, 0, w)), int(np.clip(cx + cw // 2, 0, w)))


class Mixup:
    """Batch-level mixup / cutmix; the partner of sample i is sample B-1-i (the flipped batch)."""

    def __init__(self, num_classes: int, mixup_alpha: float = 0.0, cutmix_alpha: float = 0.0, prob: float = 1.0,
                 switch_prob: float = 0.5, smoothing: float = 0.1):
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.prob, self.switch_prob, self.smoothing = prob, switch_prob, smoothing

    @property
    def active(self) -> bool:
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    def __call__(self, x: torch.Tensor, target: torch.Tensor, rng: np.random.Generator):
        """-> (mixed x, soft targets (B, K), lam)."""
        x, y, lam, _ = self.mix(x, target, rng)
        return x, y, lam

    def mix(self, x: torch.Tensor, target: torch.Tensor, rng: np.random.Generator):
        """-> (mixed x, soft targets (B, K), lam, cutmix box (y1, y2, x1, x2) in pixels or None); see :func:`mix_maps`."""
        y = smooth_one_hot(target, self.num_classes, self.smoothing)
        if not self.active or rng.random() >= self.prob:
            return x, y, 1.0, None
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        lam = float(rng.beta(self.cutmix_alpha, self.cutmix_alpha) if use_cutmix
                    else rng.beta(self.mixup_alpha, self.mixup_alpha))
        x, box = x.clone(), None
        if use_cutmix:
            box = y1, y2, x1, x2 = cutmix_box(x.shape[-2], x.shape[-1], lam, rng)
            x[..., y1:y2, x1:x2] = x.flip(0)[..., y1:y2, x1:x2]
            lam = 1.0 - (y2 - y1) * (x2 - x1) / (x.shape[-2] * x.shape[-1])  # the area actually kept
        else:
            x = x * lam + x.flip(0) * (1.0 - lam)
        return x, y * lam + y.flip(0) * (1.0 - lam), lam, box


def box_coverage(box, image_hw: tuple[int, int], grid_hw: tuple[int, int]) -> torch.Tensor:
    """(gh, gw) fraction of each grid cell inside the pixel box (y1, y2, x1, x2) of an image of ``image_hw``."""
    def axis(lo, hi, size, cells):
        edges = torch.arange(cells + 1, dtype=torch.float64) * (size / cells)
        return (torch.minimum(edges[1:], torch.tensor(float(hi))) -
                torch.maximum(edges[:-1], torch.tensor(float(lo)))).clamp(min=0) / (size / cells)
    y1, y2, x1, x2 = box
    return (axis(y1, y2, image_hw[0], grid_hw[0])[:, None] * axis(x1, x2, image_hw[1], grid_hw[1])[None, :]).float()


def mix_maps(maps: torch.Tensor, lam: float, box, image_hw: tuple[int, int]) -> torch.Tensor:
    """Per-location targets (B, K, h, w) mixed like the images: by ``lam`` for mixup; for cutmix (``box`` in
    image pixels) each location takes the partner's target in proportion to how much of it the box covers."""
    if box is None:
        return maps if lam == 1.0 else maps * lam + maps.flip(0) * (1.0 - lam)
    cover = box_coverage(box, image_hw, tuple(maps.shape[-2:])).to(maps.device, maps.dtype)
    return maps * (1.0 - cover) + maps.flip(0) * cover

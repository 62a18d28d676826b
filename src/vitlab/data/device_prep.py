"""Batch preparation on the training device: uint8 -> float, normalise, random erasing.

The fast training pipeline (``build_train_transform(output="uint8")``) sends uint8 crops from the
workers; what the float pipeline did per image at the end (``Normalize``, ``RandomErasing``) runs here
on the whole batch, on the device the batch was copied to (timm's ``PrefetchLoader`` does the same).

Random erasing keeps the recipe's semantics (Zhong et al., arXiv 1708.04896; timm's ``RandomErasing``):
each image is erased with probability ``prob``; ``count`` boxes, each of area fraction uniform in
``area`` divided by ``count`` and log-uniform aspect ratio in ``ratio``, up to 10 tries to fit inside
the image, at a uniform position; filled, in normalised space, with per-pixel standard-normal noise
('pixel'), one normal colour per box ('rand') or zeros ('const'). Box draws come from a CPU
``torch.Generator`` and the noise from a generator on the batch's device, both seeded by the caller,
so a resumed run erases the same boxes.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

ERASE_MODES = ("pixel", "rand", "const")


def normalize_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 ``(x / 255 - mean) / std`` (the float pipeline's ToTensor + Normalize)."""
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(f"{len(mean)} mean / {len(std)} std values for a {x.shape[1]}-channel batch")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x.float().div_(255.0) - m) / s


def erase_boxes(batch: int, h: int, w: int, *, prob: float, area=(0.02, 1 / 3), ratio=(0.3, 3.3), count: int = 1,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, count, 4) int64 boxes ``(top, left, height, width)``; height 0 where an image is not erased (or no try
    fit). The draws: erase or not, then per box 10 tries of (area, log aspect), the first that fits, its position."""
    tries = 10
    boxes = torch.zeros(batch, count, 4, dtype=torch.int64)
    chosen = torch.rand(batch, generator=generator) < prob
    target = h * w * (area[0] + (area[1] - area[0]) * torch.rand(batch, count, tries, generator=generator,
                                                                  dtype=torch.float64)) / count
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(batch, count, tries, generator=generator, dtype=torch.float64))
    eh = torch.sqrt(target * aspect).round().long()
    ew = torch.sqrt(target / aspect).round().long()
    fits = (eh > 0) & (eh < h) & (ew > 0) & (ew < w)
    first = torch.where(fits.any(-1), fits.float().argmax(-1), torch.full_like(fits[..., 0], -1, dtype=torch.long))
    ok = (first >= 0) & chosen.view(batch, 1)
    pick = first.clamp(min=0).unsqueeze(-1)
    bh, bw = eh.gather(-1, pick).squeeze(-1), ew.gather(-1, pick).squeeze(-1)
    u = torch.rand(batch, count, 2, generator=generator, dtype=torch.float64)
    top = (u[..., 0] * (h - bh + 1)).floor().long().clamp(max=h - 1)
    left = (u[..., 1] * (w - bw + 1)).floor().long().clamp(max=w - 1)
    boxes[..., 0], boxes[..., 1] = top, left
    boxes[..., 2], boxes[..., 3] = torch.where(ok, bh, 0), torch.where(ok, bw, 0)
    return boxes


def apply_erasing(x: torch.Tensor, boxes: torch.Tensor, mode: str = "pixel",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill the ``boxes`` of :func:`erase_boxes` in the normalised (B, C, H, W) batch ``x`` (in place, returned);
    only the images with a box are touched, their noise drawn on ``x``'s device."""
    if mode not in ERASE_MODES:
        raise ValueError(f"random erasing mode must be one of {ERASE_MODES}, got {mode!r}")
    b, c, h, w = x.shape
    hit = (boxes[..., 2] > 0).any(-1)
    idx = hit.nonzero().flatten()
    if idx.numel() == 0:
        return x
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    sub = x[idx.to(x.device)]
    for k in range(boxes.shape[1]):
        top, left, bh, bw = (v.to(x.device).view(-1, 1, 1) for v in boxes[idx, k].unbind(-1))
        inside = ((ys >= top) & (ys < top + bh) & (xs >= left) & (xs < left + bw)).unsqueeze(1)  # (n, 1, H, W)
        if mode == "pixel":
            fill = torch.randn(sub.shape, generator=generator, device=x.device, dtype=sub.dtype)
        elif mode == "rand":
            fill = torch.randn((len(idx), c, 1, 1), generator=generator, device=x.device, dtype=sub.dtype)
        else:
            fill = torch.zeros((), device=x.device, dtype=sub.dtype)
        sub = torch.where(inside, fill, sub)
    x[idx.to(x.device)] = sub
    return x


class BatchPrep:
    """uint8 batch -> normalised float batch with random erasing, on the batch's device.

    ``__call__(x, seed)``: ``seed`` (an int) drives the box draws and the noise, so the result is a function of
    (batch, seed).
    """

    def __init__(self, *, mean: Sequence[float], std: Sequence[float], reprob: float = 0.0, remode: str = "pixel",
                 recount: int = 1, area=(0.02, 1 / 3), ratio=(0.3, 3.3)):
        if remode not in ERASE_MODES:
            raise ValueError(f"random erasing mode must be one of {ERASE_MODES}, got {remode!r}")
        if not 0.0 <= reprob <= 1.0 or recount < 1:
            raise ValueError(f"reprob must be in [0, 1] and recount >= 1, got {reprob} and {recount}")
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.reprob, self.remode, self.recount = float(reprob), remode, int(recount)
        self.area, self.ratio = tuple(area), tuple(ratio)

    def __call__(self, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
        x = normalize_uint8(x, self.mean, self.std)
        if self.reprob <= 0:
            return x
        g = torch.Generator().manual_seed(int(seed))
        boxes = erase_boxes(x.shape[0], x.shape[-2], x.shape[-1], prob=self.reprob, area=self.area, ratio=self.ratio,
                            count=self.recount, generator=g)
        noise = torch.Generator(device=x.device).manual_seed(int(seed) + 1)
        return apply_erasing(x, boxes, self.remode, generator=noise)

    def __repr__(self) -> str:
        return (f"BatchPrep(mean={self.mean}, std={self.std}, reprob={self.reprob}, remode={self.remode}, "
                f"recount={self.recount})")

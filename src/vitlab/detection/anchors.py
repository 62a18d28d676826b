"""Anchor boxes of an anchor-based head, mmdetection 2.x's ``AnchorGenerator`` convention.

Per level ``i`` a set of base anchors is centred on ``(center_offset * base_size, center_offset *
base_size)`` (``center_offset = 0``: the top-left corner of the first cell, as mmdet) with
``h = base_size * scale * sqrt(ratio)`` and ``w = base_size * scale / sqrt(ratio)`` (``ratio = h / w``),
ordered ratio-major (``scale_major=True``: all scales of ratio 0 first). The grid shifts them by
``(x * stride, y * stride)`` over the feature map, row-major, the anchors of one location contiguous:
anchor ``a`` at cell ``(y, x)`` is row ``(y * W + x) * A + a``, the layout an RPN's
``permute(0, 2, 3, 1)`` outputs follow. ``base_sizes`` default to the strides, so the
Mask R-CNN setting (scales [8], ratios [0.5, 1, 2], strides 4..64) gives anchors of 32..512 px.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch


def _pair(v) -> tuple[float, float]:
    return (v, v) if isinstance(v, (int, float)) else (v[0], v[1])


class AnchorGenerator:
    """mmdet's ``AnchorGenerator(strides, ratios, scales, base_sizes, scale_major, octave_base_scale,
    scales_per_octave, centers, center_offset)``; strides are ints or (w, h) pairs."""

    def __init__(self, strides: Sequence, ratios: Sequence[float], scales: Sequence[float] | None = None,
                 base_sizes: Sequence[int] | None = None, scale_major: bool = True,
                 octave_base_scale: float | None = None, scales_per_octave: int | None = None,
                 centers: Sequence[tuple[float, float]] | None = None, center_offset: float = 0.0, type=None):
        if type not in (None, "AnchorGenerator"):
            raise ValueError(f"only mmdet's AnchorGenerator is implemented, got type={type!r}")
        if centers is not None and len(centers) != len(strides):
            raise ValueError(f"centers ({len(centers)}) must give one centre per stride ({len(strides)})")
        if not 0.0 <= center_offset <= 1.0:
            raise ValueError(f"center_offset must lie in [0, 1], got {center_offset}")
        if (scales is None) == (octave_base_scale is None or scales_per_octave is None):
            raise ValueError("give either scales or (octave_base_scale and scales_per_octave)")
        self.strides = [_pair(s) for s in strides]
        self.base_sizes = list(base_sizes) if base_sizes is not None else [min(s) for s in self.strides]
        if len(self.base_sizes) != len(self.strides):
            raise ValueError(f"base_sizes ({len(self.base_sizes)}) and strides ({len(self.strides)}) differ in length")
        if scales is None:
            scales = [octave_base_scale * 2 ** (i / scales_per_octave) for i in range(scales_per_octave)]
        self.scales = torch.tensor(list(scales), dtype=torch.float32)
        self.ratios = torch.tensor(list(ratios), dtype=torch.float32)
        self.scale_major, self.centers, self.center_offset = scale_major, centers, center_offset
        self.base_anchors = [self.single_level_base_anchors(b, self.centers[i] if centers else None)
                             for i, b in enumerate(self.base_sizes)]

    @property
    def num_levels(self) -> int:
        return len(self.strides)

    @property
    def num_base_priors(self) -> list[int]:
        """Anchors per location of each level."""
        return [a.shape[0] for a in self.base_anchors]

    def single_level_base_anchors(self, base_size: float, center=None) -> torch.Tensor:
        """(len(ratios) * len(scales), 4) anchors x1y1x2y2 around ``center`` (default: offset * base size)."""
        w = h = float(base_size)
        cx, cy = (self.center_offset * w, self.center_offset * h) if center is None else center
        h_ratios = self.ratios.sqrt()
        w_ratios = 1.0 / h_ratios
        if self.scale_major:
            ws = (w * w_ratios[:, None] * self.scales[None, :]).reshape(-1)
            hs = (h * h_ratios[:, None] * self.scales[None, :]).reshape(-1)
        else:
            ws = (w * self.scales[:, None] * w_ratios[None, :]).reshape(-1)
            hs = (h * self.scales[:, None] * h_ratios[None, :]).reshape(-1)
        return torch.stack([cx - 0.5 * ws, cy - 0.5 * hs, cx + 0.5 * ws, cy + 0.5 * hs], dim=-1)

    def single_level_grid_priors(self, featmap_size, level: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
        """(H * W * A, 4) anchors of one level, row-major over cells, the A anchors of a cell contiguous."""
        fh, fw = int(featmap_size[0]), int(featmap_size[1])
        sw, sh = self.strides[level]
        base = self.base_anchors[level].to(device=device, dtype=dtype)
        xs = torch.arange(fw, device=device, dtype=dtype) * sw
        ys = torch.arange(fh, device=device, dtype=dtype) * sh
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        shifts = torch.stack([xx.reshape(-1), yy.reshape(-1), xx.reshape(-1), yy.reshape(-1)], dim=-1)
        return (shifts[:, None, :] + base[None, :, :]).reshape(-1, 4)

    def grid_priors(self, featmap_sizes, dtype=torch.float32, device="cpu") -> list[torch.Tensor]:
        """Anchors of every level for feature maps of ``featmap_sizes`` [(H, W), ...]."""
        if len(featmap_sizes) != self.num_levels:
            raise ValueError(f"{len(featmap_sizes)} feature maps for an anchor generator with {self.num_levels} "
                             f"strides {[s[0] for s in self.strides]}")
        return [self.single_level_grid_priors(s, i, dtype, device) for i, s in enumerate(featmap_sizes)]

    def valid_flags(self, featmap_sizes, pad_shape, device="cpu") -> list[torch.Tensor]:
        """Per level, True for anchors whose cell lies inside the padded image (``ceil(pad / stride)`` cells)."""
        flags = []
        for i, (fh, fw) in enumerate(featmap_sizes):
            sw, sh = self.strides[i]
            vh = min(int(math.ceil(pad_shape[0] / sh)), int(fh))
            vw = min(int(math.ceil(pad_shape[1] / sw)), int(fw))
            valid_y = torch.zeros(int(fh), dtype=torch.bool, device=device)
            valid_x = torch.zeros(int(fw), dtype=torch.bool, device=device)
            valid_y[:vh] = True
            valid_x[:vw] = True
            cell = (valid_y[:, None] & valid_x[None, :]).reshape(-1)
            flags.append(cell[:, None].expand(-1, self.num_base_priors[i]).reshape(-1))
        return flags

    def __repr__(self) -> str:
        return (f"AnchorGenerator(strides={[s[0] for s in self.strides]}, ratios={self.ratios.tolist()}, "
                f"scales={self.scales.tolist()}, base_sizes={self.base_sizes}, center_offset={self.center_offset})")


def anchor_inside_flags(anchors: torch.Tensor, valid_flags: torch.Tensor, img_shape, allowed_border: float = 0):
    """mmdet's ``anchor_inside_flags``: valid anchors that also lie inside the (unpadded) image, with an
    ``allowed_border`` margin; ``allowed_border < 0`` keeps every valid anchor."""
    if allowed_border < 0:
        return valid_flags
    h, w = img_shape[:2]
    return (valid_flags & (anchors[:, 0] >= -allowed_border) & (anchors[:, 1] >= -allowed_border)
            & (anchors[:, 2] < w + allowed_border) & (anchors[:, 3] < h + allowed_border))

"""ViTDet's simple feature pyramid (Li et al., "Exploring Plain Vision Transformer Backbones for Object
Detection", arXiv 2203.16527, Sec. 3) for single-scale backbones (plain ViT, VOLO).

Only the last map (stride ``in_stride``, usually 16) is used. Scale 4 is two 2x2 stride-2 transposed
convs with LayerNorm + GELU between them (channels C -> C/2 -> C/4), scale 2 one transposed conv
(C -> C/2), scale 1 the identity, scale 1/2 a 2x2 max-pool; this gives strides 4/8/16/32 from a
stride-16 map. The 1x1 + 3x3 convs that follow each level in ViTDet are the neck's lateral and output
convs (an ``FPN`` with ``top_down=False`` and LayerNorm is ViTDet's exactly; a plain FPN also works).
Module names ``fpn1..fpn4`` follow the BEiT/MAE detection backbones.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vitlab.layers.norm import LayerNorm2d


def _scale_module(dim: int, scale: float) -> tuple[nn.Module, int]:
    if scale == 4:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
                             nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)), dim // 4
    if scale == 2:
        return nn.Sequential(nn.ConvTranspose2d(dim, dim // 2, 2, stride=2)), dim // 2
    if scale == 1:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2), dim
    raise ValueError(f"simple feature pyramid scales must be 4, 2, 1 or 0.5, got {scale}")


class SimpleFeaturePyramid(nn.Module):
    """Rescale one (B, C, H, W) map to ``len(scale_factors)`` maps; ``out_channels`` lists their widths and
    ``strides`` their strides (``in_stride / scale``)."""

    def __init__(self, in_channels: int, in_stride: int = 16, scale_factors: Sequence[float] = (4.0, 2.0, 1.0, 0.5)):
        super().__init__()
        self.in_channels, self.in_stride, self.scale_factors = in_channels, in_stride, list(scale_factors)
        self.out_channels, self.strides = [], []
        for i, s in enumerate(self.scale_factors):
            module, ch = _scale_module(in_channels, s)
            self.add_module(f"fpn{i + 1}", module)
            self.out_channels.append(ch)
            self.strides.append(int(in_stride / s))

    @classmethod
    def for_strides(cls, in_channels: int, in_stride: int, strides: Sequence[int] = (4, 8, 16, 32)):
        """The pyramid that turns a stride-``in_stride`` map into maps at ``strides``."""
        return cls(in_channels, in_stride, [in_stride / s for s in strides])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if isinstance(x, (list, tuple)):
            x = x[-1]
        return [getattr(self, f"fpn{i + 1}")(x) for i in range(len(self.scale_factors))]

"""Semantic FPN (Kirillov et al., "Panoptic Feature Pyramid Networks", arXiv 1901.02446, Sec. 3).

An FPN neck (1x1 laterals, nearest top-down additions, 3x3 output convs, all to ``fpn_channels``)
and the semantic branch: each level goes through ``log2(stride / finest stride)`` blocks of
3x3 conv-BN-ReLU + 2x bilinear upsampling (at least one conv), the levels are summed at the finest
resolution and a 1x1 conv classifies. UniFormer's ADE20K numbers use this decoder. Names follow
mmseg's ``FPN`` neck (``lateral_convs``/``fpn_convs``) and ``FPNHead`` (``scale_heads``, ``conv_seg``).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.heads.uper import ConvModule, _ClassifierMixin, resize


class SemanticFPNHead(_ClassifierMixin, nn.Module):
    """FPN neck + semantic branch over maps with ``in_channels`` at ``feature_strides`` (fine -> coarse)."""

    def __init__(self, in_channels: Sequence[int], feature_strides: Sequence[int], num_classes: int,
                 fpn_channels: int = 256, channels: int = 128, dropout_ratio: float = 0.1, align_corners: bool = False):
        super().__init__()
        if len(in_channels) != len(feature_strides):
            raise ValueError(f"in_channels {list(in_channels)} and feature_strides {list(feature_strides)} differ "
                             f"in length")
        if list(feature_strides) != sorted(feature_strides):
            raise ValueError(f"feature maps must go fine -> coarse, got strides {list(feature_strides)}")
        self.in_channels, self.num_classes, self.align_corners = list(in_channels), num_classes, align_corners
        self.lateral_convs = nn.ModuleList(ConvModule(c, fpn_channels, 1, norm=False, act=False) for c in in_channels)
        self.fpn_convs = nn.ModuleList(ConvModule(fpn_channels, fpn_channels, 3, norm=False, act=False)
                                       for _ in in_channels)
        self.scale_heads = nn.ModuleList()
        for stride in feature_strides:
            n = max(1, int(round(math.log2(stride / feature_strides[0]))))
            layers = []
            for k in range(n):
                layers.append(ConvModule(fpn_channels if k == 0 else channels, channels, 3))
                if stride != feature_strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def neck(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:],
                                                              mode="nearest")
        return [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"SemanticFPNHead was built for {len(self.in_channels)} maps, got {len(inputs)}")
        feats = self.neck(inputs)
        out = self.scale_heads[0](feats[0])
        for head, f in zip(self.scale_heads[1:], feats[1:]):
            out = out + resize(head(f), out.shape[-2:], self.align_corners)
        return self.cls_seg(out)

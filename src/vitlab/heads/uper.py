"""UperNet decoder (Xiao et al., "Unified Perceptual Parsing", arXiv 1807.10221) over multi-scale maps.

A pyramid pooling module (PSPNet, scales 1/2/3/6) on the deepest map, a top-down FPN over the
others, every level upsampled to the finest and fused by a 3x3 conv, then a 1x1 classifier. The
layout and names are mmseg's ``UPerHead`` (``psp_modules``, ``bottleneck``, ``lateral_convs``,
``fpn_convs``, ``fpn_bottleneck``, ``conv_seg``), the decoder VOLO, Pale, Swin and UniFormer report
ADE20K numbers with. :class:`FCNAuxHead` is the usual auxiliary head on the third level (loss x 0.4).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ConvModule(nn.Module):
    """conv -> BatchNorm -> ReLU (mmcv's ``ConvModule`` keys ``conv``/``bn``); ``norm=False`` gives a biased conv."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, norm: bool = True, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=not norm)
        self.bn = nn.BatchNorm2d(out_channels) if norm else None
        self.act = nn.ReLU(inplace=True) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


def resize(x: torch.Tensor, size, align_corners: bool = False) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == tuple(size) else F.interpolate(x, size=tuple(size), mode="bilinear",
                                                                      align_corners=align_corners)


class _ClassifierMixin:
    def reset_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.conv_seg = nn.Conv2d(self.conv_seg.in_channels, num_classes, 1, device=self.conv_seg.weight.device)

    def cls_seg(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.dropout(x))


class UPerHead(_ClassifierMixin, nn.Module):
    """UperNet over ``len(in_channels)`` maps (fine -> coarse); returns logits at the finest map's size."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512,
                 pool_scales: Sequence[int] = (1, 2, 3, 6), dropout_ratio: float = 0.1, align_corners: bool = False):
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"UPerHead needs at least two feature maps, got in_channels={list(in_channels)}")
        self.in_channels, self.num_classes, self.align_corners = list(in_channels), num_classes, align_corners
        self.psp_modules = nn.ModuleList(nn.Sequential(nn.AdaptiveAvgPool2d(s), ConvModule(in_channels[-1], channels, 1))
                                         for s in pool_scales)
        self.bottleneck = ConvModule(in_channels[-1] + len(pool_scales) * channels, channels, 3)
        self.lateral_convs = nn.ModuleList(ConvModule(c, channels, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvModule(channels, channels, 3) for _ in in_channels[:-1])
        self.fpn_bottleneck = ConvModule(len(in_channels) * channels, channels, 3)
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def psp_forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = [resize(m(x), x.shape[-2:], self.align_corners) for m in self.psp_modules]
        return self.bottleneck(torch.cat([x, *pooled], dim=1))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"UPerHead was built for {len(self.in_channels)} maps, got {len(inputs)}")
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)] + [self.psp_forward(inputs[-1])]
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], laterals[i - 1].shape[-2:], self.align_corners)
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + [laterals[-1]]
        size = outs[0].shape[-2:]
        fused = self.fpn_bottleneck(torch.cat([resize(o, size, self.align_corners) for o in outs], dim=1))
        return self.cls_seg(fused)


class FCNAuxHead(_ClassifierMixin, nn.Module):
    """Auxiliary FCN head (one 3x3 ConvModule + classifier) on a single map, as in mmseg's UperNet configs."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout_ratio: float = 0.1):
        super().__init__()
        self.num_classes = num_classes
        self.convs = nn.Sequential(ConvModule(in_channels, channels, 3))
        self.dropout = nn.Dropout2d(dropout_ratio)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_seg(self.convs(x))

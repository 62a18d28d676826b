"""RoI feature extraction from a feature pyramid, mmdetection's ``SingleRoIExtractor``.

Each RoI is read from one level chosen by its size (FPN paper, eq. 1, in mmdet's form):
``scale = sqrt(w * h)``, ``level = floor(log2(scale / finest_scale + 1e-6))`` clamped to
``[0, num_levels - 1]`` with ``finest_scale = 56``: boxes under 112 px go to the stride-4 map,
112-224 px to stride 8, 224-448 px to stride 16, larger ones to stride 32. The features come from
RoIAlign (``aligned=True``, the half-pixel-corrected variant mmcv uses by default; ``sampling_ratio=0``:
``ceil(roi_size / output_size)`` samples per bin) at ``spatial_scale = 1 / stride``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vitlab.ops import roi_align


def map_roi_levels(rois: torch.Tensor, num_levels: int, finest_scale: float = 56) -> torch.Tensor:
    """Level index (K,) of each RoI ``[batch_idx, x1, y1, x2, y2]`` (see the module docstring)."""
    scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(torch.log2(scale / finest_scale + 1e-6))
    return levels.clamp(min=0, max=num_levels - 1).long()


class SingleRoIExtractor(nn.Module):
    """``SingleRoIExtractor(roi_layer=dict(type='RoIAlign', output_size=7, sampling_ratio=0), out_channels,
    featmap_strides, finest_scale=56)``; ``forward(feats, rois) -> (K, out_channels, oh, ow)``. No parameters."""

    def __init__(self, roi_layer: dict | None = None, out_channels: int = 256,
                 featmap_strides: Sequence[int] = (4, 8, 16, 32), finest_scale: float = 56, type=None):
        super().__init__()
        if type not in (None, "SingleRoIExtractor"):
            raise ValueError(f"only SingleRoIExtractor is implemented, got type={type!r}")
        layer = dict(roi_layer or {"type": "RoIAlign", "output_size": 7, "sampling_ratio": 0})
        if layer.pop("type", "RoIAlign") != "RoIAlign":
            raise ValueError(f"only RoIAlign RoI layers are implemented, got {roi_layer}")
        if layer.pop("pool_mode", "avg") != "avg":
            raise ValueError("only RoIAlign with pool_mode='avg' is implemented")
        size = layer.pop("output_size", 7)
        self.output_size = (size, size) if isinstance(size, int) else tuple(size)
        self.sampling_ratio = int(layer.pop("sampling_ratio", 0))
        self.aligned = bool(layer.pop("aligned", True))
        if layer:
            raise ValueError(f"unknown RoIAlign options {sorted(layer)}")
        self.out_channels, self.featmap_strides = out_channels, list(featmap_strides)
        self.finest_scale = finest_scale

    @property
    def num_inputs(self) -> int:
        """How many (finest) pyramid levels the extractor reads."""
        return len(self.featmap_strides)

    def forward(self, feats: Sequence[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        feats = list(feats)[:self.num_inputs]
        if len(feats) != self.num_inputs:
            raise ValueError(f"SingleRoIExtractor reads {self.num_inputs} maps (strides {self.featmap_strides}), "
                             f"got {len(feats)}")
        out = feats[0].new_zeros((rois.shape[0], self.out_channels, *self.output_size))
        if rois.shape[0] == 0:
            return out
        levels = map_roi_levels(rois, len(feats), self.finest_scale)
        for i, (feat, stride) in enumerate(zip(feats, self.featmap_strides)):
            inds = torch.nonzero(levels == i).flatten()
            if inds.numel() > 0:
                out[inds] = roi_align(feat, rois[inds], self.output_size, spatial_scale=1.0 / stride,
                                      sampling_ratio=self.sampling_ratio, aligned=self.aligned).to(out.dtype)
            else:  # keep every level in the graph (identical graphs across processes under DDP)
                out = out + feat.sum() * 0.0
        return out

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, featmap_strides={self.featmap_strides}, "
                f"finest_scale={self.finest_scale}, aligned={self.aligned}")

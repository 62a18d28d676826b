"""Mask R-CNN mask head, mmdetection 2.x's ``FCNMaskHead`` (He et al., arXiv 1703.06870, Fig. 4).

``num_convs`` x (3x3 ``ConvModule`` + ReLU, ``convs.i.conv``), a 2x2 stride-2 ``ConvTranspose2d``
(``upsample``) + ReLU, and a 1x1 ``conv_logits`` with one channel per class (one with
``class_agnostic``): a 14x14 RoI feature becomes 28x28 mask logits. ``upsample`` and ``conv_logits``
are Kaiming-normal (fan_out) initialised, biases zero.

Targets (mmdet's ``mask_target``): each positive RoI, clipped to the mask's size, RoIAligns
(``aligned=True``, adaptive sampling) its gt bitmap to ``mask_size`` x ``mask_size``, binarised at 0.5.
Loss: per-pixel BCE on the logits of the RoI's gt class, averaged over all pixels of all positives.

Inference (``get_seg_masks``): the sigmoid probabilities of the predicted class are pasted into the
image by bilinear sampling at the pixel centres relative to the box (mmdet's ``_do_paste_mask``:
``grid_sample`` with ``align_corners=False``, zeros outside) and thresholded at ``mask_thr_binary``.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.heads.bbox_head import build_loss
from vitlab.heads.fpn_neck import ConvModule
from vitlab.ops import roi_align


def mask_targets(pos_proposals: Sequence[torch.Tensor], pos_assigned_gt_inds: Sequence[torch.Tensor],
                 gt_masks: Sequence[torch.Tensor], mask_size: int | tuple[int, int] = 28) -> torch.Tensor:
    """(sum of positives, mask_size, mask_size) float {0, 1} targets from per-image (N_i, H, W) gt masks."""
    size = (mask_size, mask_size) if isinstance(mask_size, int) else tuple(mask_size)
    out = []
    for boxes, inds, masks in zip(pos_proposals, pos_assigned_gt_inds, gt_masks):
        if boxes.shape[0] == 0:
            out.append(boxes.new_zeros((0, *size)))
            continue
        h, w = masks.shape[-2:]
        boxes = boxes[:, :4].detach().clone()
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        # each gt mask is one "image" of the RoIAlign batch; a positive reads the mask of its gt
        gt = masks.to(device=boxes.device, dtype=boxes.dtype)[:, None]
        rois = torch.cat([inds.to(device=boxes.device, dtype=boxes.dtype)[:, None], boxes], 1)
        t = roi_align(gt, rois, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)[:, 0]
        out.append((t >= 0.5).to(boxes.dtype))
    return torch.cat(out) if out else torch.zeros((0, *size))


def paste_masks(probs: torch.Tensor, boxes: torch.Tensor, img_h: int, img_w: int,
                threshold: float = 0.5) -> torch.Tensor:
    """(n, s, s) probabilities in (n, 4) boxes -> (n, img_h, img_w) bool masks, ``prob >= threshold``.

    Each mask is resampled only on the pixels of its box plus a one-pixel margin (mmdet's ``skip_empty``
    region); pixels outside it are below any threshold > 0 after bilinear sampling with zero padding.
    """
    n = probs.shape[0]
    out = torch.zeros((n, img_h, img_w), dtype=torch.bool, device=probs.device)
    if n == 0 or img_h == 0 or img_w == 0:
        return out
    boxes = boxes.float()
    for i in range(n):
        x0, y0, x1, y1 = (float(v) for v in boxes[i])
        xa, ya = max(math.floor(x0) - 1, 0), max(math.floor(y0) - 1, 0)
        xb, yb = min(math.ceil(x1) + 1, img_w), min(math.ceil(y1) + 1, img_h)
        if xb <= xa or yb <= ya:
            continue
        gx = (torch.arange(xa, xb, device=probs.device, dtype=torch.float32) + 0.5 - x0) / max(x1 - x0, 1e-12) * 2 - 1
        gy = (torch.arange(ya, yb, device=probs.device, dtype=torch.float32) + 0.5 - y0) / max(y1 - y0, 1e-12) * 2 - 1
        grid = torch.stack([gx[None, :].expand(gy.numel(), -1), gy[:, None].expand(-1, gx.numel())], dim=-1)
        sampled = F.grid_sample(probs[i][None, None].float(), grid[None], mode="bilinear", padding_mode="zeros",
                                align_corners=False)[0, 0]
        out[i, ya:yb, xa:xb] = sampled >= threshold
    return out


class FCNMaskHead(nn.Module):
    """mmdet's ``FCNMaskHead(num_convs=4, roi_feat_size=14, in_channels=256, conv_kernel_size=3,
    conv_out_channels=256, num_classes=80, class_agnostic=False, upsample_cfg=dict(type='deconv',
    scale_factor=2), norm_cfg=None, loss_mask=dict(type='CrossEntropyLoss', use_mask=True))``."""

    def __init__(self, *, num_convs: int = 4, roi_feat_size: int = 14, in_channels: int = 256,
                 conv_kernel_size: int = 3, conv_out_channels: int = 256, num_classes: int = 80,
                 class_agnostic: bool = False, upsample_cfg: dict | None = None, norm_cfg: dict | None = None,
                 loss_mask: dict | None = None, type=None, conv_cfg=None, init_cfg=None):
        super().__init__()
        if type not in (None, "FCNMaskHead"):
            raise ValueError(f"only FCNMaskHead is implemented, got type={type!r}")
        up = dict(upsample_cfg or {"type": "deconv", "scale_factor": 2})
        if up.get("type") != "deconv" or up.get("scale_factor", 2) != 2:
            raise ValueError(f"only upsample_cfg=dict(type='deconv', scale_factor=2) is implemented, "
                             f"got {upsample_cfg}")
        self.num_classes, self.class_agnostic = num_classes, class_agnostic
        self.roi_feat_size, self.in_channels = roi_feat_size, in_channels
        self.loss_mask = build_loss(loss_mask, {"type": "CrossEntropyLoss", "use_mask": True, "loss_weight": 1.0})
        self.convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, conv_kernel_size,
                       padding=(conv_kernel_size - 1) // 2, norm_cfg=norm_cfg) for i in range(num_convs))
        last = conv_out_channels if num_convs else in_channels
        self.upsample = nn.ConvTranspose2d(last, last, 2, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.conv_logits = nn.Conv2d(last, 1 if class_agnostic else num_classes, 1)
        for m in (self.upsample, self.conv_logits):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, s, s) RoI features -> (N, num_classes or 1, 2s, 2s) mask logits."""
        for conv in self.convs:
            x = conv(x)
        return self.conv_logits(self.relu(self.upsample(x)))

    def get_targets(self, sampling_results: Sequence, gt_masks: Sequence[torch.Tensor],
                    rcnn_train_cfg: dict | None = None) -> torch.Tensor:
        size = (rcnn_train_cfg or {}).get("mask_size", 28)
        return mask_targets([r.pos_bboxes for r in sampling_results],
                            [r.pos_assigned_gt_inds for r in sampling_results], gt_masks, size)

    def loss(self, mask_pred: torch.Tensor, mask_targets: torch.Tensor, labels: torch.Tensor) -> dict:
        """``{'loss_mask'}``: BCE of the gt class's logits (mmdet's ``mask_cross_entropy``)."""
        if mask_pred.shape[0] == 0:
            return {"loss_mask": mask_pred.sum()}
        idx = torch.zeros_like(labels) if self.class_agnostic else labels
        logits = mask_pred[torch.arange(mask_pred.shape[0], device=mask_pred.device), idx]
        loss = F.binary_cross_entropy_with_logits(logits, mask_targets.to(logits.dtype), reduction="mean")
        return {"loss_mask": self.loss_mask.loss_weight * loss}

    def get_seg_masks(self, mask_pred: torch.Tensor, det_bboxes: torch.Tensor, det_labels: torch.Tensor,
                      img_shape, threshold: float = 0.5, scale_factor=None, is_prob: bool = False) -> torch.Tensor:
        """(n, H, W) bool masks in an image of ``img_shape`` (h, w) for boxes ``det_bboxes`` given in the
        coordinates the RoIs used, divided by ``scale_factor`` (w, h, w, h) when given (mmdet's rescale)."""
        probs = mask_pred if is_prob else mask_pred.sigmoid()
        boxes = det_bboxes[:, :4]
        if scale_factor is not None:
            boxes = boxes / boxes.new_tensor(scale_factor)
        idx = torch.zeros_like(det_labels) if self.class_agnostic else det_labels
        probs = probs[torch.arange(probs.shape[0], device=probs.device), idx]
        return paste_masks(probs, boxes, int(img_shape[0]), int(img_shape[1]), threshold)

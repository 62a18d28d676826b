"""Box utilities: areas and overlaps (torchvision.ops conventions), RoI packing (mmdet's ``bbox2roi``) and the
R-CNN box delta coder (mmdet's ``DeltaXYWHBBoxCoder``).

Boxes are (x1, y1, x2, y2) with width ``x2 - x1`` (no +1).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor


def _upcast(t: Tensor) -> Tensor:
    """Avoid overflow in products: half precision to float32, small integers to int64."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.long()


def box_area(boxes: Tensor) -> Tensor:
    """(N, 4) -> (N,) areas ``(x2 - x1) * (y2 - y1)``."""
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _inter_union(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    area_a, area_b = box_area(a), box_area(b)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area_a[:, None] + area_b[None, :] - inter


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU (torchvision.ops.box_iou): (N, 4), (M, 4) -> (N, M)."""
    inter, union = _inter_union(a, b)
    return inter / union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise generalized IoU (Rezatofighi et al., 2019; torchvision.ops.generalized_box_iou):
    ``IoU - (|C| - |A u B|) / |C|`` with C the smallest enclosing box. (N, 4), (M, 4) -> (N, M)."""
    inter, union = _inter_union(a, b)
    iou = inter / union
    lt = torch.minimum(a[:, None, :2], b[None, :, :2])
    rb = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]
    return iou - (enclosing - union) / enclosing


def _elementwise(a: Tensor, b: Tensor, eps: float, giou: bool) -> Tensor:
    if a.shape != b.shape or a.shape[-1] != 4:
        raise ValueError(f"elementwise IoU needs two (..., 4) tensors of one shape, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    a, b = _upcast(a), _upcast(b)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    wh = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area_a + area_b - inter).clamp(min=eps)
    iou = inter / union
    if not giou:
        return iou
    ewh = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0)
    enclosing = (ewh[..., 0] * ewh[..., 1]).clamp(min=eps)
    return iou - (enclosing - union) / enclosing


def elementwise_box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """IoU of corresponding boxes, (..., 4), (..., 4) -> (...); the union is clamped to >= eps
    (mmdet's ``bbox_overlaps(..., is_aligned=True)``)."""
    return _elementwise(a, b, eps, giou=False)


def elementwise_generalized_box_iou(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """Generalized IoU of corresponding boxes, (..., 4), (..., 4) -> (...); union and enclosing area are
    clamped to >= eps (mmdet's ``bbox_overlaps(..., mode='giou', is_aligned=True)``, used by ``GIoULoss``)."""
    return _elementwise(a, b, eps, giou=True)


def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clip (..., 4) boxes to an image of size (h, w): x to [0, w], y to [0, h] (torchvision)."""
    h, w = size[0], size[1]
    x = boxes[..., 0::2].clamp(min=0, max=w)
    y = boxes[..., 1::2].clamp(min=0, max=h)
    return torch.stack((x, y), dim=-1).reshape(boxes.shape)


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both >= min_size (torchvision's convention;
    mmdet's RPN instead keeps width and height > min_bbox_size)."""
    ws, hs = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    return torch.where((ws >= min_size) & (hs >= min_size))[0]


def bbox2roi(bbox_list: Sequence[Tensor]) -> Tensor:
    """Per-image boxes (each (Ni, 4+), extra columns such as scores ignored) -> (K, 5) RoIs
    [image_index, x1, y1, x2, y2] (mmdet's ``bbox2roi``)."""
    rois = []
    for i, b in enumerate(bbox_list):
        if b.shape[0] > 0:
            rois.append(torch.cat([b.new_full((b.shape[0], 1), i), b[:, :4]], dim=-1))
        else:
            rois.append(b.new_zeros((0, 5)))
    if not rois:
        return torch.zeros((0, 5))
    return torch.cat(rois, 0)


def roi2bbox(rois: Tensor) -> list[Tensor]:
    """(K, 5) RoIs -> list of per-image (Ni, 4) boxes, images 0..max index (mmdet's ``roi2bbox``)."""
    if rois.shape[0] == 0:
        return []
    img_ids = rois[:, 0].long()
    return [rois[img_ids == i, 1:] for i in range(int(img_ids.max()) + 1)]


class DeltaXYWHBBoxCoder:
    """R-CNN box parameterisation (Girshick et al., 2014) exactly as mmdet's ``DeltaXYWHBBoxCoder``.

    ``encode(proposals, gt)``: ``((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph))`` normalised by
    ``(d - target_means) / target_stds``. ``decode(proposals, deltas)`` inverts it, with ``dw, dh`` clamped to
    ``+-|log(wh_ratio_clip)|`` and, when ``clip_border`` and ``max_shape=(h, w)`` are given, x clipped to
    [0, w] and y to [0, h]. Deltas may be class-specific, (N, 4 * num_classes), sharing one proposal per row.
    """

    def __init__(self, target_means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                 target_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), clip_border: bool = True,
                 add_ctr_clamp: bool = False, ctr_clamp: float = 32):
        if len(target_means) != 4 or len(target_stds) != 4:
            raise ValueError(f"target_means and target_stds need 4 values each, got {target_means}, {target_stds}")
        self.means = tuple(float(m) for m in target_means)
        self.stds = tuple(float(s) for s in target_stds)
        self.clip_border = clip_border
        self.add_ctr_clamp = add_ctr_clamp
        self.ctr_clamp = ctr_clamp

    def __repr__(self) -> str:
        return (f"DeltaXYWHBBoxCoder(target_means={self.means}, target_stds={self.stds}, "
                f"clip_border={self.clip_border}, add_ctr_clamp={self.add_ctr_clamp}, ctr_clamp={self.ctr_clamp})")

    def encode(self, proposals: Tensor, gt: Tensor) -> Tensor:
        """(N, ..., 4) proposals and matched ground truth -> (N, ..., 4) normalised deltas."""
        if proposals.shape != gt.shape or proposals.shape[-1] != 4:
            raise ValueError(f"encode needs proposals and gt of one shape (N, 4), got {tuple(proposals.shape)} "
                             f"and {tuple(gt.shape)}")
        if not proposals.is_floating_point() or proposals.dtype in (torch.float16, torch.bfloat16):
            proposals = proposals.float()
        gt = gt.to(proposals.dtype)
        px = (proposals[..., 0] + proposals[..., 2]) * 0.5
        py = (proposals[..., 1] + proposals[..., 3]) * 0.5
        pw = proposals[..., 2] - proposals[..., 0]
        ph = proposals[..., 3] - proposals[..., 1]
        gx = (gt[..., 0] + gt[..., 2]) * 0.5
        gy = (gt[..., 1] + gt[..., 3]) * 0.5
        gw = gt[..., 2] - gt[..., 0]
        gh = gt[..., 3] - gt[..., 1]
        deltas = torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=-1)
        means = deltas.new_tensor(self.means)
        stds = deltas.new_tensor(self.stds)
        return (deltas - means) / stds

    def decode(self, proposals: Tensor, deltas: Tensor, max_shape=None, wh_ratio_clip: float = 16 / 1000) -> Tensor:
        """Apply (N, 4 * num_classes) deltas to (N, 4) proposals -> boxes of the deltas' shape.

        Also accepts batched (B, N, 4) proposals with (B, N, 4 * num_classes) deltas; ``max_shape`` is (h, w)
        (or (h, w, c)), or one per image for the batched form.
        """
        if deltas.shape[0] != proposals.shape[0] or deltas.shape[-1] % 4 or proposals.shape[-1] != 4 \
                or deltas.dim() != proposals.dim() or (deltas.dim() == 3 and deltas.shape[1] != proposals.shape[1]):
            raise ValueError(f"decode needs proposals (N, 4) and deltas (N, 4 * num_classes) (or (B, N, ...)), "
                             f"got {tuple(proposals.shape)} and {tuple(deltas.shape)}")
        reps = deltas.shape[-1] // 4
        means = deltas.new_tensor(self.means).repeat(reps)
        stds = deltas.new_tensor(self.stds).repeat(reps)
        d = deltas * stds + means
        dx, dy, dw, dh = d[..., 0::4], d[..., 1::4], d[..., 2::4], d[..., 3::4]
        x1, y1, x2, y2 = (proposals[..., i:i + 1] for i in range(4))
        px, py = (x1 + x2) * 0.5, (y1 + y2) * 0.5
        pw, ph = x2 - x1, y2 - y1
        dx_w, dy_h = pw * dx, ph * dy
        max_ratio = abs(math.log(wh_ratio_clip))
        if self.add_ctr_clamp:
            dx_w = dx_w.clamp(min=-self.ctr_clamp, max=self.ctr_clamp)
            dy_h = dy_h.clamp(min=-self.ctr_clamp, max=self.ctr_clamp)
            dw, dh = dw.clamp(max=max_ratio), dh.clamp(max=max_ratio)
        else:
            dw = dw.clamp(min=-max_ratio, max=max_ratio)
            dh = dh.clamp(min=-max_ratio, max=max_ratio)
        gw, gh = pw * dw.exp(), ph * dh.exp()
        gx, gy = px + dx_w, py + dy_h
        boxes = torch.stack([gx - gw * 0.5, gy - gh * 0.5, gx + gw * 0.5, gy + gh * 0.5], dim=-1)
        boxes = boxes.reshape(deltas.shape)
        if self.clip_border and max_shape is not None:
            shape = torch.as_tensor(max_shape, device=boxes.device)[..., :2].to(boxes.dtype)
            if shape.dim() == 2 and (boxes.dim() != 3 or shape.shape[0] != boxes.shape[0]):
                raise ValueError(f"one max_shape per image needs (B, N, 4k) deltas with B={shape.shape[0]}")
            # (h, w) -> (w, h, w, h, ...) along the last axis
            hi = shape.flip(-1).repeat(*([1] * (shape.dim() - 1)), 2 * reps)
            hi = hi.unsqueeze(-2) if shape.dim() == 2 else hi
            zero = boxes.new_zeros(())
            boxes = torch.where(boxes < zero, zero, boxes)
            boxes = torch.where(boxes > hi, hi, boxes)
        return boxes

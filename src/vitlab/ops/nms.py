"""Non-maximum suppression with torchvision's semantics, in plain PyTorch.

``nms`` visits boxes in order of decreasing score (a stable sort, so ties keep their input order), keeps a
box unless a box kept before it overlaps it with IoU strictly greater than ``iou_threshold``, and returns the
kept indices in that visiting order. The IoU is ``inter / (area_i + area_j - inter)`` with no epsilon, as in
torchvision's CPU kernel, so two identical zero-area boxes (IoU 0/0) do not suppress each other; the
comparison is made against the threshold as a double, as that kernel does.

The suppression mask is computed one block of sorted boxes (rows) at a time against every later box, only for
rows that are still alive, so memory stays at block x N; the greedy pass over a block runs on the host.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

_BLOCK = 256


def _check(boxes: Tensor, scores: Tensor, name: str) -> None:
    if boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"{name}: boxes must have shape (N, 4) in (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"{name}: scores must have shape (N,) with N={boxes.shape[0]}, got {tuple(scores.shape)}")


def _threshold(value: float, dtype: torch.dtype) -> Tensor:
    """The largest ``dtype`` number <= value: ``iou > it`` equals ``double(iou) > value`` for every iou."""
    t = torch.tensor(float(value), dtype=dtype)
    if t.double().item() > float(value):
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype))
    return t


def _overlaps(a: Tensor, area_a: Tensor, b: Tensor, area_b: Tensor, thr: Tensor) -> Tensor:
    """(len(a), len(b)) bool: IoU(a_i, b_j) > thr, the IoU computed as torchvision's kernel does."""
    w = (torch.minimum(a[:, None, 2], b[None, :, 2]) - torch.maximum(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    h = (torch.minimum(a[:, None, 3], b[None, :, 3]) - torch.maximum(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    inter = w.mul_(h)
    union = area_a[:, None] + area_b[None, :] - inter
    return inter.div_(union) > thr.to(inter.device)


def _greedy(b: Tensor, area: Tensor, thr: Tensor) -> np.ndarray:
    """Positions (into the score-sorted boxes ``b``) of the boxes greedy NMS keeps, ascending."""
    n = b.shape[0]
    live = np.ones(n, dtype=bool)
    kept: list[int] = []
    for s in range(0, n, _BLOCK):
        e = min(s + _BLOCK, n)
        rows = np.flatnonzero(live[s:e]) + s           # rows not suppressed by an earlier block
        if rows.size == 0:
            continue
        r = torch.as_tensor(rows, device=b.device)
        # rows against every later column: the upper triangle, one block of rows at a time
        m = _overlaps(b[r], area[r], b[s:], area[s:], thr).cpu().numpy()
        for row, i in enumerate(rows.tolist()):
            if live[i]:
                kept.append(i)
                live[i + 1:] &= ~m[row, i + 1 - s:]
    return np.asarray(kept, dtype=np.int64)


def _greedy_nms(boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None) -> Tensor:
    device = boxes.device
    if boxes.shape[0] == 0:
        return torch.empty((0,), dtype=torch.int64, device=device)
    if not boxes.is_floating_point():
        raise TypeError(f"boxes must be a floating point tensor, got {boxes.dtype}")
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes = boxes.float()
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes.detach()[order].contiguous()
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    thr = _threshold(iou_threshold, b.dtype)
    if idxs is None:
        keep = _greedy(b, area, thr)
    else:
        # one greedy pass per category over its boxes (still in score order); positions merged back in order
        cls = idxs.to(device)[order]
        by_cls = torch.sort(cls, stable=True)
        _, counts = torch.unique_consecutive(by_cls.values, return_counts=True)
        parts = []
        for pos in torch.split(by_cls.indices, counts.tolist()):
            parts.append(pos.cpu().numpy()[_greedy(b[pos], area[pos], thr)])
        keep = np.sort(np.concatenate(parts))
    return order[torch.as_tensor(keep, device=device)]


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS (torchvision.ops.nms): int64 indices of the kept boxes, by decreasing score.

    boxes: (N, 4) float in (x1, y1, x2, y2); scores: (N,); a box is dropped when its IoU with a kept,
    higher-scoring box is > iou_threshold.
    """
    _check(boxes, scores, "nms")
    return _greedy_nms(boxes, scores, iou_threshold, None)


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS within each category (torchvision.ops.batched_nms): boxes of different ``idxs`` never suppress
    each other. Returns int64 indices by decreasing score; the same keeps as running ``nms`` per category.

    Instead of torchvision's coordinate-offset trick (which can perturb IoUs by float rounding) each
    category is suppressed on its own and the keeps are merged back into score order.
    """
    _check(boxes, scores, "batched_nms")
    if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
        raise ValueError(f"batched_nms: idxs must have shape (N,) with N={boxes.shape[0]}, got {tuple(idxs.shape)}")
    return _greedy_nms(boxes, scores, iou_threshold, idxs)

"""mIoU / mAcc / aAcc from per-class areas accumulated over a whole set (the mmseg definitions).

For each class c: intersection = #(pred = c and label = c), union = #(pred = c or label = c) and
label area = #(label = c), summed over every image first; pixels with the ignore label are left
out. IoU_c = I/U and Acc_c = I/label area (NaN for classes absent from both prediction and
labels, which the means skip); aAcc = sum(I) / sum(label area). Every value is reported in percent,
as mmseg prints them.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist


class SegmentationMetric:
    """Accumulates class areas with ``update(pred, label)``; ``compute()`` returns the summary."""

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: list[str] | None = None):
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.class_names = class_names or [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        # rows: intersection, area of prediction, area of label (int64: exact over any set size)
        self.areas = torch.zeros(3, self.num_classes, dtype=torch.int64)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """``pred`` and ``label``: integer maps of the same shape (any batch layout)."""
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        valid = label != self.ignore_index
        p, t = pred[valid].long().cpu(), label[valid].long().cpu()
        if t.numel() and (t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(f"label values must lie in [0, {self.num_classes}) or equal {self.ignore_index}")
        k = self.num_classes
        self.areas[0] += torch.bincount(t[p == t], minlength=k)[:k]
        self.areas[1] += torch.bincount(p.clamp(0, k - 1), minlength=k)[:k]
        self.areas[2] += torch.bincount(t, minlength=k)[:k]

    def sync(self) -> None:
        """Sum the areas over all processes (call once before ``compute`` under torchrun)."""
        if dist.is_available() and dist.is_initialized():
            areas = self.areas.to("cuda" if dist.get_backend() == "nccl" else "cpu")
            dist.all_reduce(areas)
            self.areas = areas.cpu()

    def compute(self) -> dict:
        """``mIoU``, ``mAcc``, ``aAcc`` and per-class ``IoU`` / ``Acc``, in percent (NaN for absent classes)."""
        inter, pred_area, label_area = self.areas.double()
        union = pred_area + label_area - inter
        iou = torch.where(union > 0, 100 * inter / union.clamp(min=1), torch.full_like(inter, math.nan))
        acc = torch.where(label_area > 0, 100 * inter / label_area.clamp(min=1), torch.full_like(inter, math.nan))
        mean = lambda v: float(v[~v.isnan()].mean()) if (~v.isnan()).any() else math.nan  # noqa: E731
        return {"mIoU": mean(iou), "mAcc": mean(acc),
                "aAcc": float(100 * inter.sum() / label_area.sum()) if label_area.sum() > 0 else math.nan,
                "per_class": {name: {"IoU": float(i), "Acc": float(a)}
                              for name, i, a in zip(self.class_names, iou, acc)}}


def format_table(result: dict) -> str:
    """Per-class IoU/Acc table (percent, as :meth:`SegmentationMetric.compute` gives them) and the summary line."""
    names = list(result["per_class"])
    width = max([5] + [len(n) for n in names])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}"]
    fmt = lambda v: "   nan" if v is None or math.isnan(v) else f"{v:6.2f}"  # noqa: E731
    for name in names:
        row = result["per_class"][name]
        lines.append(f"{name:<{width}}  {fmt(row['IoU'])}  {fmt(row['Acc'])}")
    lines.append(f"mIoU {fmt(result['mIoU']).strip()}  mAcc {fmt(result['mAcc']).strip()}  "
                 f"aAcc {fmt(result['aAcc']).strip()}")
    return "\n".join(lines)

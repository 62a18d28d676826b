"""Classification evaluation: top-1/top-5, loss, per-class accuracy, confusion matrix, images/s.

Works on one process or under torchrun (each rank evaluates its shard; counts are summed over the
ranks). ``predict(model, inputs) -> logits`` can replace ``model(inputs)`` (e.g. averaging the
views of a clip). Unreadable files are counted and named.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .distributed import DistInfo, all_gather_object, all_reduce_sum
from .runtime import autocast


@torch.no_grad()
def evaluate(model, loader, num_classes: int, device: torch.device, predict=None, amp_dtype: str | None = None,
             dist_info: DistInfo | None = None) -> dict:
    dist_info = dist_info or DistInfo()
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    stats = torch.zeros(4, dtype=torch.float64)  # loss_sum, top1, top5, count
    seconds, skipped = 0.0, []
    for x, y, names in loader:
        skipped += names
        if x is None:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must be in [0, {num_classes - 1}] for a {num_classes}-class model, "
                             f"found {int(y.min())}..{int(y.max())}")
        t0 = time.perf_counter()
        with autocast(device, amp_dtype):
            logits = (predict(model, x) if predict else model(x)).float()
        seconds += time.perf_counter() - t0
        stats[0] += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, num_classes), dim=1).indices
        stats[1] += (top[:, 0] == y).sum().item()
        stats[2] += (top == y[:, None]).any(1).sum().item()
        stats[3] += y.numel()
        confusion += torch.bincount(y.cpu() * num_classes + top[:, 0].cpu(),
                                    minlength=num_classes ** 2).view(num_classes, num_classes).double()
    all_reduce_sum(stats, dist_info)
    all_reduce_sum(confusion, dist_info)
    time_t = all_reduce_sum(torch.tensor([seconds], dtype=torch.float64), dist_info)
    skipped = [n for part in all_gather_object(skipped, dist_info) for n in part]
    model.train(was_training)
    n = max(stats[3].item(), 1)
    cm = confusion.numpy().astype(np.int64)
    per_class = np.divide(np.diag(cm), np.maximum(cm.sum(1), 1)) * 100
    return {
        "top1": 100.0 * stats[1].item() / n, "top5": 100.0 * stats[2].item() / n, "loss": stats[0].item() / n,
        "count": int(stats[3].item()), "skipped": len(skipped), "skipped_files": skipped,
        "images_per_s": stats[3].item() / max(time_t.item() / dist_info.world_size, 1e-9),
        "per_class": [round(float(a), 3) for a in per_class], "confusion": cm.tolist(),
    }

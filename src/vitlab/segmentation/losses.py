"""Segmentation losses: SegViT's ATM loss and plain pixel cross-entropy.

ATM loss (Zhang et al., arXiv 2210.05844, Sec. 3.1; the MaskFormer-style criterion without
Hungarian matching, since query c is bound to class c):

* ``loss_ce``: cross-entropy of every query over ``num_classes + 1`` logits, target c for the
  classes present in the image and "no object" otherwise, the no-object class weighted ``eos_coef``
  (0.1), as a weighted mean over the queries of the whole batch - of all processes under torchrun
  (the weight sum is all-reduced like the number of masks), so a DDP step computes the loss of
  the global batch;
* ``loss_mask``: sigmoid focal loss (alpha 0.25, gamma 2) of the present classes' masks, upsampled
  bilinearly to the label size, mean over pixels, summed over masks / number of masks, x 20;
* ``loss_dice``: dice loss (+1 smoothing) of the same masks, x 1.

Ignored pixels are negatives (0) in every target mask, as in the official criterion. Every
auxiliary output (deep supervision) gets the same terms with the suffix ``_i``.

Pixel cross-entropy (UperNet, Semantic FPN) is mmseg's default: averaged over every pixel of the
batch, ignored ones contributing 0 (``avg_non_ignore=False``), which also makes the mean over equal
per-process batches the global mean.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """RetinaNet focal loss (arXiv 1708.02002) on (M, P) mask logits; mean over P, sum over M / num_masks."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_masks


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, num_masks: float) -> torch.Tensor:
    """1 - (2|p.t| + 1) / (|p| + |t| + 1) per mask on (M, P) logits, summed / num_masks."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(-1)
    denominator = prob.sum(-1) + targets.sum(-1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_masks


def present_classes(label: torch.Tensor, num_classes: int, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch index, class) of every class present in each (B, H, W) label map, ignore label excluded."""
    if label.ndim != 3:
        raise ValueError(f"expected labels of shape (B, H, W), got {tuple(label.shape)}")
    valid = label != ignore_index
    if not torch.compiler.is_compiling() and valid.any():   # a host sync: checked eagerly, not inside a graph
        lo, hi = int(label[valid].min()), int(label[valid].max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"label values must lie in [0, {num_classes}) or equal the ignore index {ignore_index}; "
                             f"found {lo if lo < 0 else hi}")
    B = label.shape[0]
    flat = torch.where(valid, label, torch.full_like(label, num_classes)).reshape(B, -1)
    hist = torch.zeros(B, num_classes + 1, dtype=torch.long, device=label.device)
    hist.scatter_add_(1, flat, torch.ones_like(flat))
    batch_idx, cls_idx = torch.nonzero(hist[:, :num_classes] > 0, as_tuple=True)
    return batch_idx, cls_idx


def _global_mean_count(n, device) -> torch.Tensor:
    """``n`` (a count or weight sum) averaged over the processes: dividing a local sum by it and averaging the
    results over processes (DDP's gradient mean) gives the global sum / the global count."""
    num = torch.as_tensor(n, dtype=torch.float32, device=device).reshape(1).clone()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(num)
        num = num / dist.get_world_size()
    return num[0]


def _global_num_masks(n: int, device) -> float:
    return max(float(_global_mean_count(float(n), device).item()), 1.0)


class ATMLoss(nn.Module):
    """SegViT's loss with the official ``ATMLoss`` arguments; ``forward(outputs, label, ignore_index)``
    returns the weighted terms ``loss_ce``, ``loss_mask``, ``loss_dice`` (+ ``_i`` per aux output)."""

    def __init__(self, num_classes: int, dec_layers: int, mask_weight: float = 20.0, dice_weight: float = 1.0,
                 cls_weight: float = 1.0, loss_weight: float = 1.0, use_point: bool = False, eos_coef: float = 0.1,
                 type: str | None = None):
        super().__init__()
        if use_point:
            raise NotImplementedError("ATMLoss(use_point=True) (point-sampled mask losses) is not implemented")
        if type not in (None, "ATMLoss"):
            raise ValueError(f"ATMLoss config has type={type!r}")
        self.num_classes, self.dec_layers, self.eos_coef = num_classes, dec_layers, eos_coef
        weights = {"loss_ce": cls_weight, "loss_mask": mask_weight, "loss_dice": dice_weight}
        self.weight_dict = dict(weights)
        for i in range(dec_layers - 1):
            self.weight_dict.update({f"{k}_{i}": v for k, v in weights.items()})
        self.loss_weight = loss_weight

    def class_weights(self, device) -> torch.Tensor:
        w = torch.ones(self.num_classes + 1, device=device)
        w[-1] = self.eos_coef
        return w

    def _terms(self, out: dict, batch_idx, cls_idx, target_masks, num_masks) -> dict:
        logits = out["pred_logits"]
        target = torch.full(logits.shape[:2], self.num_classes, dtype=torch.long, device=logits.device)
        target[batch_idx, cls_idx] = cls_idx
        weights = self.class_weights(logits.device)
        ce = F.cross_entropy(logits.transpose(1, 2), target, weights, reduction="sum")
        terms = {"loss_ce": ce / _global_mean_count(weights[target].sum().detach(), logits.device).clamp_min(1e-12)}
        masks = out["pred_masks"][batch_idx, cls_idx]
        if masks.shape[-2:] != target_masks.shape[-2:]:  # (a same-size bilinear resize is the identity)
            masks = F.interpolate(masks[:, None], size=target_masks.shape[-2:], mode="bilinear",
                                  align_corners=False)[:, 0]
        masks, tgt = masks.flatten(1), target_masks.flatten(1)
        terms["loss_mask"] = sigmoid_focal_loss(masks, tgt, num_masks)
        terms["loss_dice"] = dice_loss(masks, tgt, num_masks)
        return terms

    def forward(self, outputs: dict, label: torch.Tensor, ignore_index: int = 255) -> dict[str, torch.Tensor]:
        if label.ndim == 4 and label.shape[1] == 1:
            label = label[:, 0]
        batch_idx, cls_idx = present_classes(label, self.num_classes, ignore_index)
        target_masks = (label[batch_idx] == cls_idx[:, None, None]).to(outputs["pred_masks"].dtype)
        num_masks = _global_num_masks(len(cls_idx), label.device)
        losses = self._terms(outputs, batch_idx, cls_idx, target_masks, num_masks)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            losses.update({f"{k}_{i}": v for k, v in self._terms(aux, batch_idx, cls_idx, target_masks,
                                                                  num_masks).items()})
        return {k: v * self.weight_dict[k] * self.loss_weight for k, v in losses.items() if k in self.weight_dict}


def pixel_cross_entropy(logits: torch.Tensor, label: torch.Tensor, ignore_index: int = 255) -> torch.Tensor:
    """Per-pixel cross-entropy for decoders that output (B, K, h, w) logits (UperNet, FPN); logits are
    upsampled bilinearly to the label size first."""
    if logits.shape[-2:] != label.shape[-2:]:
        logits = F.interpolate(logits, size=label.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, label, ignore_index=ignore_index, reduction="sum") / label.numel()

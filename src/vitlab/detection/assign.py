"""Box assignment and sampling, mmdetection 2.x's ``MaxIoUAssigner`` and ``RandomSampler``.

Assignment (per image) labels each candidate box (anchor or proposal) by its IoU with the gt boxes:
``gt_inds`` is ``-1`` (ignored), ``0`` (negative) or ``j + 1`` (positive for gt ``j``):

1. every box starts at ``-1``; a box whose best IoU is in ``[0, neg_iou_thr)`` (or in the
   ``(lo, hi)`` range when a pair is given) becomes negative;
2. a box whose best IoU is ``>= pos_iou_thr`` becomes positive for its best gt;
3. with ``match_low_quality``, every gt whose best IoU is ``>= min_pos_iou`` also takes the box(es)
   with that IoU (all of them with ``gt_max_assign_all``), even below ``pos_iou_thr`` — later gts win
   ties, as mmdet loops over gts in order;
4. boxes covered by an ignored (crowd) region, IoF ``> ignore_iof_thr`` (``ignore_iof_thr > 0``),
   are set to ``-1`` before all this.

Sampling draws at most ``num * pos_fraction`` positives and fills up to ``num`` with negatives,
uniformly without replacement; with ``add_gt_as_proposals`` the gt boxes are prepended to the
candidates as positives of themselves (after assignment, as mmdet does).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from vitlab.ops import box_iou


def box_iof(boxes: torch.Tensor, regions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(N, M) intersection over the area of each of ``boxes`` (mmdet's ``mode='iof'``)."""
    lt = torch.max(boxes[:, None, :2], regions[None, :, :2])
    rb = torch.min(boxes[:, None, 2:], regions[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).clamp(min=eps)
    return inter / area[:, None]


@dataclass
class AssignResult:
    """``gt_inds`` (n,): -1 ignored, 0 negative, j+1 gt j; ``max_overlaps`` (n,) best IoU; ``labels`` (n,)
    the class of the assigned gt (-1 where not positive) or None when no labels were given."""

    num_gts: int
    gt_inds: torch.Tensor
    max_overlaps: torch.Tensor
    labels: torch.Tensor | None = None

    def add_gt_(self, gt_labels: torch.Tensor | None) -> None:
        """Prepend the gts as candidates assigned to themselves (IoU 1)."""
        self_inds = torch.arange(1, self.num_gts + 1, dtype=self.gt_inds.dtype, device=self.gt_inds.device)
        self.gt_inds = torch.cat([self_inds, self.gt_inds])
        self.max_overlaps = torch.cat([self.max_overlaps.new_ones(self.num_gts), self.max_overlaps])
        if self.labels is not None:
            self.labels = torch.cat([gt_labels.to(self.labels.dtype), self.labels])


class MaxIoUAssigner:
    """mmdet's ``MaxIoUAssigner`` (see the module docstring for the rules)."""

    def __init__(self, pos_iou_thr: float, neg_iou_thr, min_pos_iou: float = 0.0, gt_max_assign_all: bool = True,
                 ignore_iof_thr: float = -1, ignore_wrt_candidates: bool = True, match_low_quality: bool = True,
                 gpu_assign_thr: int = -1, iou_calculator=None, type=None):
        if type not in (None, "MaxIoUAssigner"):
            raise ValueError(f"only MaxIoUAssigner is implemented, got type={type!r}")
        if not ignore_wrt_candidates:
            raise ValueError("ignore_wrt_candidates=False (IoF over the ignored boxes) is not implemented")
        self.pos_iou_thr, self.neg_iou_thr, self.min_pos_iou = pos_iou_thr, neg_iou_thr, min_pos_iou
        self.gt_max_assign_all, self.ignore_iof_thr = gt_max_assign_all, ignore_iof_thr
        self.match_low_quality = match_low_quality

    def assign(self, bboxes: torch.Tensor, gt_bboxes: torch.Tensor, gt_bboxes_ignore: torch.Tensor | None = None,
               gt_labels: torch.Tensor | None = None) -> AssignResult:
        """Assign ``bboxes`` (n, 4+) to ``gt_bboxes`` (k, 4); only the first four columns are read."""
        bboxes, gt_bboxes = bboxes[:, :4], gt_bboxes[:, :4].to(bboxes.dtype)
        n, k = bboxes.shape[0], gt_bboxes.shape[0]
        gt_inds = bboxes.new_full((n,), -1, dtype=torch.long)
        max_overlaps = bboxes.new_zeros((n,))
        labels = None if gt_labels is None else bboxes.new_full((n,), -1, dtype=torch.long)
        if n == 0 or k == 0:
            if k == 0:
                gt_inds.zero_()  # no gt: everything is background
            return AssignResult(k, gt_inds, max_overlaps, labels)

        overlaps = box_iou(gt_bboxes, bboxes)  # (k, n)
        if self.ignore_iof_thr > 0 and gt_bboxes_ignore is not None and gt_bboxes_ignore.numel() > 0:
            iof = box_iof(bboxes, gt_bboxes_ignore[:, :4].to(bboxes.dtype))
            overlaps[:, iof.max(dim=1).values > self.ignore_iof_thr] = -1
        max_overlaps, argmax = overlaps.max(dim=0)
        gt_max, gt_argmax = overlaps.max(dim=1)

        if isinstance(self.neg_iou_thr, (int, float)):
            gt_inds[(max_overlaps >= 0) & (max_overlaps < self.neg_iou_thr)] = 0
        else:
            lo, hi = self.neg_iou_thr
            gt_inds[(max_overlaps >= lo) & (max_overlaps < hi)] = 0
        pos = max_overlaps >= self.pos_iou_thr
        gt_inds[pos] = argmax[pos] + 1
        if self.match_low_quality:
            for j in range(k):
                if gt_max[j] >= self.min_pos_iou:
                    if self.gt_max_assign_all:
                        gt_inds[overlaps[j] == gt_max[j]] = j + 1
                    else:
                        gt_inds[gt_argmax[j]] = j + 1
        if labels is not None:
            sel = gt_inds > 0
            labels[sel] = gt_labels[gt_inds[sel] - 1].long()
        return AssignResult(k, gt_inds, max_overlaps, labels)


class SamplingResult:
    """The sampled positives and negatives of one image, with mmdet's attribute names."""

    def __init__(self, pos_inds, neg_inds, bboxes, gt_bboxes, assign_result: AssignResult, gt_flags):
        self.pos_inds, self.neg_inds = pos_inds, neg_inds
        self.pos_bboxes, self.neg_bboxes = bboxes[pos_inds], bboxes[neg_inds]
        self.pos_is_gt = gt_flags[pos_inds]
        self.num_gts = gt_bboxes.shape[0]
        self.pos_assigned_gt_inds = assign_result.gt_inds[pos_inds] - 1
        if gt_bboxes.numel() == 0:
            self.pos_gt_bboxes = gt_bboxes.new_zeros((0, 4)).view(-1, 4)
        else:
            self.pos_gt_bboxes = gt_bboxes[:, :4][self.pos_assigned_gt_inds]
        self.pos_gt_labels = assign_result.labels[pos_inds] if assign_result.labels is not None else None

    @property
    def bboxes(self) -> torch.Tensor:
        """Positives first, then negatives (the order the RoI head's targets follow)."""
        return torch.cat([self.pos_bboxes, self.neg_bboxes])

    def __repr__(self) -> str:
        return f"SamplingResult(num_pos={len(self.pos_inds)}, num_neg={len(self.neg_inds)}, num_gts={self.num_gts})"


class RandomSampler:
    """mmdet's ``RandomSampler(num, pos_fraction, neg_pos_ub=-1, add_gt_as_proposals=True)``.

    Draws come from ``generator`` (a CPU ``torch.Generator``) or torch's global generator.
    """

    def __init__(self, num: int, pos_fraction: float, neg_pos_ub: float = -1, add_gt_as_proposals: bool = True,
                 generator: torch.Generator | None = None, type=None):
        if type not in (None, "RandomSampler"):
            raise ValueError(f"only RandomSampler is implemented, got type={type!r}")
        self.num, self.pos_fraction, self.neg_pos_ub = num, pos_fraction, neg_pos_ub
        self.add_gt_as_proposals, self.generator = add_gt_as_proposals, generator

    def _choice(self, inds: torch.Tensor, num: int) -> torch.Tensor:
        if inds.numel() <= num:
            return inds
        perm = torch.randperm(inds.numel(), generator=self.generator)[:num].to(inds.device)
        return inds[perm]

    def sample(self, assign_result: AssignResult, bboxes: torch.Tensor, gt_bboxes: torch.Tensor,
               gt_labels: torch.Tensor | None = None) -> SamplingResult:
        bboxes = bboxes[:, :4]
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.bool)
        if self.add_gt_as_proposals and gt_bboxes.shape[0] > 0:
            if gt_labels is None:
                raise ValueError("add_gt_as_proposals=True needs gt_labels")
            bboxes = torch.cat([gt_bboxes[:, :4].to(bboxes.dtype), bboxes])
            assign_result.add_gt_(gt_labels)
            gt_flags = torch.cat([gt_flags.new_ones(gt_bboxes.shape[0]), gt_flags])
        num_pos = int(self.num * self.pos_fraction)
        pos_inds = self._choice(torch.nonzero(assign_result.gt_inds > 0).flatten(), num_pos).unique()
        num_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_neg = min(num_neg, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds = self._choice(torch.nonzero(assign_result.gt_inds == 0).flatten(), num_neg).unique()
        return SamplingResult(pos_inds, neg_inds, bboxes, gt_bboxes, assign_result, gt_flags)

"""R-CNN box heads in mmdetection 2.x's layout: ``Shared2FCBBoxHead`` and ``ConvFCBBoxHead`` (e.g. 4conv1fc).

A RoI feature (in_channels x roi_feat_size x roi_feat_size) goes through ``num_shared_convs`` 3x3
``ConvModule`` s (``shared_convs.i.conv`` / ``.bn``), is flattened, then through ``num_shared_fcs``
Linear + ReLU layers (``shared_fcs.i``); ``fc_cls`` gives ``num_classes + 1`` logits (background
last) and ``fc_reg`` the box deltas, ``4 * num_classes`` class-specific (or 4 with
``reg_class_agnostic``). Initialisation as mmdet: Xavier-uniform shared fcs, ``fc_cls`` N(0, 0.01),
``fc_reg`` N(0, 0.001).

Training targets follow mmdet's ``BBoxHead.get_targets``: each image's sampled RoIs are positives
first, then negatives; positives get their gt label and the encoded gt box (the gt box itself with
``reg_decoded_bbox``, whose loss then compares decoded boxes, e.g. GIoU), negatives the background
label ``num_classes``. ``loss_cls`` is averaged over all sampled RoIs, ``loss_bbox`` summed over the
positives and divided by the number of sampled RoIs (mmdet's ``avg_factor = bbox_targets.size(0)``).

The loss functions mmdet's configs name (``CrossEntropyLoss`` with ``use_sigmoid``/``use_mask``,
``L1Loss``, ``SmoothL1Loss``, ``GIoULoss``) are here too: weighted element losses summed and divided
by ``avg_factor`` (+ float eps), times ``loss_weight``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.heads.fpn_neck import ConvModule
from vitlab.ops import DeltaXYWHBBoxCoder, batched_nms, elementwise_generalized_box_iou

_EPS = torch.finfo(torch.float32).eps


# --- losses (mmdet's weight_reduce_loss: sum(loss * weight) / (avg_factor + eps), or the mean) -------------
def _reduce(loss: torch.Tensor, weight: torch.Tensor | None, avg_factor: float | None) -> torch.Tensor:
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        return loss.mean() if loss.numel() else loss.sum()
    return loss.sum() / (avg_factor + _EPS)


class WeightedLoss:
    """``loss(pred, target, weight=None, avg_factor=None) * loss_weight`` for one of mmdet's loss types."""

    def __init__(self, type: str, loss_weight: float = 1.0, use_sigmoid: bool = False, use_mask: bool = False,
                 beta: float = 1.0, eps: float = 1e-6, reduction: str = "mean", class_weight=None,
                 ignore_index=None, avg_non_ignore: bool = False):
        if type not in ("CrossEntropyLoss", "L1Loss", "SmoothL1Loss", "GIoULoss"):
            raise ValueError(f"unknown loss type {type!r}; expected CrossEntropyLoss, L1Loss, SmoothL1Loss or "
                             f"GIoULoss")
        if reduction != "mean" or class_weight is not None:
            raise ValueError("only reduction='mean' without class_weight is implemented")
        if type == "CrossEntropyLoss" and use_sigmoid and use_mask:
            raise ValueError("CrossEntropyLoss takes use_sigmoid or use_mask, not both")
        if type == "SmoothL1Loss" and beta <= 0:
            raise ValueError(f"SmoothL1Loss needs beta > 0, got {beta}")
        self.type, self.loss_weight, self.use_sigmoid, self.use_mask = type, loss_weight, use_sigmoid, use_mask
        self.beta, self.eps = beta, eps

    def __call__(self, pred, target, weight=None, avg_factor=None) -> torch.Tensor:
        if self.type == "CrossEntropyLoss":
            if self.use_sigmoid:
                loss = F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype), reduction="none")
            else:
                loss = F.cross_entropy(pred, target, reduction="none")
        elif self.type == "L1Loss":
            loss = (pred - target).abs()
        elif self.type == "SmoothL1Loss":
            diff = (pred - target).abs()
            loss = torch.where(diff < self.beta, 0.5 * diff * diff / self.beta, diff - 0.5 * self.beta)
        else:  # GIoU of corresponding boxes; a (N, 4) weight is averaged to (N,) as mmdet does
            loss = 1 - elementwise_generalized_box_iou(pred, target, eps=self.eps)
            if weight is not None and weight.dim() > 1:
                weight = weight.mean(-1)
        return self.loss_weight * _reduce(loss, weight, avg_factor)

    def __repr__(self) -> str:
        return f"WeightedLoss({self.type}, loss_weight={self.loss_weight})"


def build_loss(cfg: dict | None, default: dict) -> WeightedLoss:
    return WeightedLoss(**dict(cfg or default))


def build_bbox_coder(cfg: dict | None, default_stds=(1.0, 1.0, 1.0, 1.0)) -> DeltaXYWHBBoxCoder:
    cfg = dict(cfg or {"target_means": (0.0,) * 4, "target_stds": default_stds})
    kind = cfg.pop("type", "DeltaXYWHBBoxCoder")
    if kind != "DeltaXYWHBBoxCoder":
        raise ValueError(f"only DeltaXYWHBBoxCoder is implemented, got {kind!r}")
    return DeltaXYWHBBoxCoder(**cfg)


def multiclass_nms(bboxes: torch.Tensor, scores: torch.Tensor, score_thr: float, iou_threshold: float,
                   max_num: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """mmdet's ``multiclass_nms``: (N, 4K) or (N, 4) boxes and (N, K+1) scores (background last) ->
    (dets (n, 5) [x1, y1, x2, y2, score] by decreasing score, labels (n,)). NMS runs per class."""
    num_classes = scores.shape[1] - 1
    if bboxes.shape[1] > 4:
        bboxes = bboxes.view(bboxes.shape[0], -1, 4)
    else:
        bboxes = bboxes[:, None].expand(-1, num_classes, 4)
    scores = scores[:, :-1]
    labels = torch.arange(num_classes, device=scores.device).view(1, -1).expand_as(scores)
    bboxes, scores, labels = bboxes.reshape(-1, 4), scores.reshape(-1), labels.reshape(-1)
    valid = scores > score_thr
    bboxes, scores, labels = bboxes[valid], scores[valid], labels[valid]
    if bboxes.numel() == 0:
        return bboxes.new_zeros((0, 5)), labels
    keep = batched_nms(bboxes, scores, labels, iou_threshold)
    if max_num > 0:
        keep = keep[:max_num]
    return torch.cat([bboxes[keep], scores[keep, None]], dim=1), labels[keep]


class ConvFCBBoxHead(nn.Module):
    """mmdet's ``ConvFCBBoxHead`` with shared convs and fcs (separate cls/reg branches are not implemented).

    ``forward(x (N, C, s, s)) -> (cls_score (N, num_classes + 1), bbox_pred (N, 4 * num_classes or 4))``.
    """

    def __init__(self, *, num_shared_convs: int = 0, num_shared_fcs: int = 0, num_cls_convs: int = 0,
                 num_cls_fcs: int = 0, num_reg_convs: int = 0, num_reg_fcs: int = 0, conv_out_channels: int = 256,
                 fc_out_channels: int = 1024, in_channels: int = 256, roi_feat_size: int = 7, num_classes: int = 80,
                 bbox_coder: dict | None = None, reg_class_agnostic: bool = False, reg_decoded_bbox: bool = False,
                 norm_cfg: dict | None = None, loss_cls: dict | None = None, loss_bbox: dict | None = None,
                 with_avg_pool: bool = False, type=None, **unused):
        super().__init__()
        if type not in (None, "ConvFCBBoxHead", "Shared2FCBBoxHead", "Shared4Conv1FCBBoxHead"):
            raise ValueError(f"unknown box head type {type!r}")
        if num_cls_convs or num_cls_fcs or num_reg_convs or num_reg_fcs:
            raise ValueError("separate classification/regression branches (num_cls_*/num_reg_*) are not implemented")
        unused.pop("conv_cfg", None)
        unused.pop("init_cfg", None)
        if unused:
            raise TypeError(f"{self.__class__.__name__} got unexpected arguments {sorted(unused)}")
        if with_avg_pool:
            raise ValueError("with_avg_pool=True is not implemented")
        if num_shared_convs + num_shared_fcs == 0:
            raise ValueError("a box head needs at least one shared conv or fc")
        self.num_classes, self.reg_class_agnostic, self.reg_decoded_bbox = num_classes, reg_class_agnostic, \
            reg_decoded_bbox
        self.in_channels, self.roi_feat_size = in_channels, roi_feat_size
        self.bbox_coder = build_bbox_coder(bbox_coder, (0.1, 0.1, 0.2, 0.2))
        self.loss_cls = build_loss(loss_cls, {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": 1.0})
        self.loss_bbox = build_loss(loss_bbox, {"type": "L1Loss", "loss_weight": 1.0})

        self.shared_convs = nn.ModuleList(
            ConvModule(in_channels if i == 0 else conv_out_channels, conv_out_channels, 3, padding=1,
                       norm_cfg=norm_cfg) for i in range(num_shared_convs))
        dim = (conv_out_channels if num_shared_convs else in_channels) * roi_feat_size * roi_feat_size
        fcs = []
        for i in range(num_shared_fcs):
            fcs.append(nn.Linear(dim if i == 0 else fc_out_channels, fc_out_channels))
        self.shared_fcs = nn.ModuleList(fcs)
        last = fc_out_channels if num_shared_fcs else dim
        self.relu = nn.ReLU(inplace=True)
        self.fc_cls = nn.Linear(last, num_classes + 1)
        self.fc_reg = nn.Linear(last, 4 if reg_class_agnostic else 4 * num_classes)
        for fc in self.shared_fcs:
            nn.init.xavier_uniform_(fc.weight)
            nn.init.zeros_(fc.bias)
        nn.init.normal_(self.fc_cls.weight, std=0.01)
        nn.init.normal_(self.fc_reg.weight, std=0.001)
        nn.init.zeros_(self.fc_cls.bias)
        nn.init.zeros_(self.fc_reg.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.shared_convs:
            x = conv(x)
        x = x.flatten(1)
        for fc in self.shared_fcs:
            x = self.relu(fc(x))
        return self.fc_cls(x), self.fc_reg(x)

    # --- training ----------------------------------------------------------------------------------
    def get_targets(self, sampling_results: Sequence, rcnn_train_cfg: dict | None = None):
        """(labels (K,), label_weights (K,), bbox_targets (K, 4), bbox_weights (K, 4)) over the batch's sampled
        RoIs in ``bbox2roi([res.bboxes ...])`` order (per image: positives, then negatives)."""
        pos_weight = (rcnn_train_cfg or {}).get("pos_weight", -1)
        out = ([], [], [], [])
        for res in sampling_results:
            num_pos, num_neg = res.pos_bboxes.shape[0], res.neg_bboxes.shape[0]
            n = num_pos + num_neg
            ref = res.pos_bboxes if num_pos else res.neg_bboxes
            labels = torch.full((n,), self.num_classes, dtype=torch.long, device=ref.device)
            label_weights = ref.new_zeros(n)
            targets, weights = ref.new_zeros((n, 4)), ref.new_zeros((n, 4))
            if num_pos:
                labels[:num_pos] = res.pos_gt_labels
                label_weights[:num_pos] = 1.0 if pos_weight <= 0 else pos_weight
                targets[:num_pos] = res.pos_gt_bboxes if self.reg_decoded_bbox else \
                    self.bbox_coder.encode(res.pos_bboxes, res.pos_gt_bboxes)
                weights[:num_pos] = 1.0
            if num_neg:
                label_weights[-num_neg:] = 1.0
            for lst, t in zip(out, (labels, label_weights, targets, weights)):
                lst.append(t)
        return tuple(torch.cat(lst) for lst in out)

    def loss(self, cls_score, bbox_pred, rois, labels, label_weights, bbox_targets, bbox_weights) -> dict:
        """``{'loss_cls', 'loss_bbox'}`` (mmdet's ``BBoxHead.loss``)."""
        avg = max(float((label_weights > 0).sum()), 1.0)
        loss_cls = self.loss_cls(cls_score, labels, label_weights, avg_factor=avg) if cls_score.numel() \
            else cls_score.sum()
        pos = (labels >= 0) & (labels < self.num_classes)
        if pos.any():
            pred = bbox_pred
            if self.reg_decoded_bbox:
                pred = self.bbox_coder.decode(rois[:, 1:], pred)
            pred = pred.view(pred.shape[0], 4)[pos] if self.reg_class_agnostic else \
                pred.view(pred.shape[0], -1, 4)[pos, labels[pos]]
            loss_bbox = self.loss_bbox(pred, bbox_targets[pos], bbox_weights[pos], avg_factor=bbox_targets.shape[0])
        else:
            loss_bbox = bbox_pred[pos].sum()
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    # --- refinement (cascade) and inference --------------------------------------------------------------
    def regress_by_class(self, rois: torch.Tensor, labels: torch.Tensor, bbox_pred: torch.Tensor,
                         img_shape) -> torch.Tensor:
        """Decode the deltas of class ``labels`` (or the agnostic ones) on ``rois`` (K, 4) or (K, 5)."""
        if not self.reg_class_agnostic:
            idx = (labels * 4)[:, None] + torch.arange(4, device=labels.device)
            bbox_pred = torch.gather(bbox_pred, 1, idx)
        boxes = self.bbox_coder.decode(rois[:, -4:], bbox_pred, max_shape=img_shape)
        return torch.cat([rois[:, :1], boxes], dim=1) if rois.shape[1] == 5 else boxes

    def refine_bboxes(self, rois, labels, bbox_preds, pos_is_gts: Sequence[torch.Tensor], img_shapes):
        """Next-stage proposals per image: regressed RoIs without the gt boxes the sampler added (mmdet)."""
        out = []
        for i, is_gt in enumerate(pos_is_gts):
            inds = torch.nonzero(rois[:, 0] == i).flatten()
            boxes = self.regress_by_class(rois[inds, 1:], labels[inds], bbox_preds[inds], img_shapes[i])
            keep = torch.ones(inds.numel(), dtype=torch.bool, device=rois.device)
            keep[:is_gt.numel()] = ~is_gt.bool()
            out.append(boxes[keep])
        return out

    def get_bboxes(self, rois, cls_score, bbox_pred, img_shape, scale_factor=None, rescale: bool = False,
                   cfg: dict | None = None):
        """Softmax scores, decoded (clipped) boxes, optional division by ``scale_factor`` (w, h, w, h), then
        ``multiclass_nms`` with ``cfg`` (score_thr, nms.iou_threshold, max_per_img); without ``cfg`` the
        raw (boxes, scores)."""
        scores = F.softmax(cls_score, dim=-1)
        bboxes = self.bbox_coder.decode(rois[:, 1:], bbox_pred, max_shape=img_shape)
        if rescale and bboxes.shape[0] > 0:
            sf = bboxes.new_tensor(scale_factor)
            bboxes = (bboxes.view(bboxes.shape[0], -1, 4) / sf).view(bboxes.shape[0], -1)
        if cfg is None:
            return bboxes, scores
        return multiclass_nms(bboxes, scores, cfg["score_thr"], cfg["nms"]["iou_threshold"], cfg["max_per_img"])


class Shared2FCBBoxHead(ConvFCBBoxHead):
    """mmdet's ``Shared2FCBBoxHead``: flatten -> fc -> fc (``fc_out_channels``) -> ``fc_cls`` / ``fc_reg``."""

    def __init__(self, *, fc_out_channels: int = 1024, **kwargs):
        kwargs.pop("num_shared_convs", None)
        kwargs.pop("num_shared_fcs", None)
        super().__init__(num_shared_convs=0, num_shared_fcs=2, fc_out_channels=fc_out_channels, **kwargs)


class Shared4Conv1FCBBoxHead(ConvFCBBoxHead):
    """mmdet's ``Shared4Conv1FCBBoxHead``: 4 x (3x3 conv + norm + ReLU) -> flatten -> fc -> cls / reg."""

    def __init__(self, *, fc_out_channels: int = 1024, **kwargs):
        kwargs.pop("num_shared_convs", None)
        kwargs.pop("num_shared_fcs", None)
        super().__init__(num_shared_convs=4, num_shared_fcs=1, fc_out_channels=fc_out_channels, **kwargs)


BBOX_HEADS = {"ConvFCBBoxHead": ConvFCBBoxHead, "Shared2FCBBoxHead": Shared2FCBBoxHead,
              "Shared4Conv1FCBBoxHead": Shared4Conv1FCBBoxHead}


def build_bbox_head(cfg: dict | nn.Module) -> nn.Module:
    """A box head from an mmdet config dict (``type`` picks the class) or an already built module."""
    if isinstance(cfg, nn.Module):
        return cfg
    cfg = dict(cfg)
    kind = cfg.get("type", "Shared2FCBBoxHead")
    if kind not in BBOX_HEADS:
        raise ValueError(f"unknown bbox_head type {kind!r}; expected one of {sorted(BBOX_HEADS)}")
    cfg["type"] = kind
    return BBOX_HEADS[kind](**cfg)

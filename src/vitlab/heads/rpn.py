"""Region Proposal Network head (Ren et al., arXiv 1506.01497) in mmdetection 2.x's ``RPNHead`` layout.

One head shared by every pyramid level: ``rpn_conv`` (3x3, ``feat_channels``) + ReLU, then 1x1
``rpn_cls`` (one sigmoid logit per anchor) and 1x1 ``rpn_reg`` (4 deltas per anchor); convs are
N(0, 0.01) initialised. Outputs per level: scores (B, A, H, W) and deltas (B, 4A, H, W), read in
``permute(0, 2, 3, 1)`` order to match the anchors of :mod:`vitlab.detection.anchors`.

Training (mmdet's ``AnchorHead.loss``): the anchors inside the image (``allowed_border``; -1 keeps all)
are assigned to the gt boxes (``assigner``), 256 are sampled at 1:1 (``sampler``), positives target 1
and their encoded gt box; BCE and the box loss are summed over the sampled anchors and divided by the
batch's number of sampled anchors (each image counting at least one positive and one negative).

Proposals (mmdet 2.x's ``RPNHead._get_bboxes_single``): per image and level, the ``nms_pre`` highest
scores; decoded boxes clipped to the image; boxes with width or height ``<= min_bbox_size`` dropped;
one NMS (IoU ``nms.iou_threshold``) per level via the level index as the category; the first
``max_per_img`` by score. Proposals carry no gradient.

The anchor generator, assigner and sampler are objects handed in by the detector
(:func:`vitlab.detection.mask_rcnn.build_rpn_head` builds them from mmdet's config).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vitlab.heads.bbox_head import build_bbox_coder, build_loss
from vitlab.ops import batched_nms

DEFAULT_PROPOSAL_CFG = {"nms_pre": 1000, "max_per_img": 1000, "nms": {"type": "nms", "iou_threshold": 0.7},
                        "min_bbox_size": 0}


class RPNHead(nn.Module):
    """``RPNHead(in_channels, feat_channels=256, anchor_generator=..., bbox_coder=..., loss_cls=...,
    loss_bbox=..., train_cfg=None, test_cfg=None, assigner=None, sampler=None)``.

    ``anchor_generator`` is an object with ``num_base_priors``, ``grid_priors`` and ``valid_flags``
    (:class:`vitlab.detection.anchors.AnchorGenerator`); ``train_cfg`` is mmdet's ``train_cfg.rpn``
    (``allowed_border``, ``pos_weight``), ``test_cfg`` the proposal settings.
    """

    def __init__(self, in_channels: int, feat_channels: int = 256, *, anchor_generator, bbox_coder: dict | None = None,
                 loss_cls: dict | None = None, loss_bbox: dict | None = None, train_cfg: dict | None = None,
                 test_cfg: dict | None = None, assigner=None, sampler=None, reg_decoded_bbox: bool = False,
                 num_convs: int = 1, type=None, init_cfg=None):
        super().__init__()
        if type not in (None, "RPNHead"):
            raise ValueError(f"only RPNHead is implemented, got type={type!r}")
        if isinstance(anchor_generator, dict):
            raise TypeError("RPNHead needs an anchor generator object; build the head with "
                            "vitlab.detection.mask_rcnn.build_rpn_head(cfg) to turn mmdet's config into one")
        if num_convs != 1:
            raise ValueError("only num_convs=1 (mmdet's default RPN) is implemented")
        priors = set(anchor_generator.num_base_priors)
        if len(priors) != 1:
            raise ValueError(f"every level needs the same number of anchors, got {anchor_generator.num_base_priors}")
        self.num_base_priors = priors.pop()
        self.in_channels, self.feat_channels = in_channels, feat_channels
        self.prior_generator, self.assigner, self.sampler = anchor_generator, assigner, sampler
        self.train_cfg, self.test_cfg = dict(train_cfg or {}), dict(test_cfg or DEFAULT_PROPOSAL_CFG)
        self.reg_decoded_bbox = reg_decoded_bbox
        self.bbox_coder = build_bbox_coder(bbox_coder)
        self.loss_cls = build_loss(loss_cls, {"type": "CrossEntropyLoss", "use_sigmoid": True, "loss_weight": 1.0})
        self.loss_bbox = build_loss(loss_bbox, {"type": "L1Loss", "loss_weight": 1.0})
        if not self.loss_cls.use_sigmoid:
            raise ValueError("only the sigmoid RPN classifier (loss_cls use_sigmoid=True) is implemented")
        self.rpn_conv = nn.Conv2d(in_channels, feat_channels, 3, padding=1)
        self.rpn_cls = nn.Conv2d(feat_channels, self.num_base_priors, 1)
        self.rpn_reg = nn.Conv2d(feat_channels, self.num_base_priors * 4, 1)
        for m in (self.rpn_conv, self.rpn_cls, self.rpn_reg):
            nn.init.normal_(m.weight, std=0.01)
            nn.init.zeros_(m.bias)

    def forward_single(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.relu(self.rpn_conv(x))
        return self.rpn_cls(x), self.rpn_reg(x)

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per level: scores (B, A, H, W) and deltas (B, 4A, H, W)."""
        outs = [self.forward_single(f) for f in feats]
        return [o[0] for o in outs], [o[1] for o in outs]

    def anchors(self, cls_scores: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        return self.prior_generator.grid_priors(sizes, dtype=cls_scores[0].dtype, device=cls_scores[0].device)

    # --- training ------------------------------------------------------------------------------------
    def get_targets(self, anchors: torch.Tensor, valid: Sequence[torch.Tensor], gt_bboxes, img_shapes,
                    gt_bboxes_ignore=None):
        """Per image (labels 1/0 (N,), label_weights (N,), bbox_targets (N, 4), bbox_weights (N, 4)) over all
        anchors, plus the batch's (num_pos, num_neg) with each image counting at least one of each."""
        if self.assigner is None or self.sampler is None:
            raise RuntimeError("RPNHead has no assigner/sampler: build it with train_cfg (build_rpn_head)")
        border = self.train_cfg.get("allowed_border", -1)
        pos_weight = self.train_cfg.get("pos_weight", -1)
        out, num_pos, num_neg = [], 0, 0
        for i, gt in enumerate(gt_bboxes):
            h, w = img_shapes[i]
            inside = valid[i]
            if border >= 0:
                inside = inside & (anchors[:, 0] >= -border) & (anchors[:, 1] >= -border) \
                    & (anchors[:, 2] < w + border) & (anchors[:, 3] < h + border)
            cand = anchors[inside]
            ignore = gt_bboxes_ignore[i] if gt_bboxes_ignore is not None else None
            assign = self.assigner.assign(cand, gt, ignore, None)
            res = self.sampler.sample(assign, cand, gt)
            n = anchors.shape[0]
            labels = anchors.new_zeros(n)
            label_weights = anchors.new_zeros(n)
            targets, weights = anchors.new_zeros((n, 4)), anchors.new_zeros((n, 4))
            idx = torch.nonzero(inside).flatten()
            pos, neg = idx[res.pos_inds], idx[res.neg_inds]
            if pos.numel():
                labels[pos] = 1.0
                label_weights[pos] = 1.0 if pos_weight <= 0 else pos_weight
                targets[pos] = res.pos_gt_bboxes if self.reg_decoded_bbox else \
                    self.bbox_coder.encode(res.pos_bboxes, res.pos_gt_bboxes)
                weights[pos] = 1.0
            label_weights[neg] = 1.0
            out.append((labels, label_weights, targets, weights))
            num_pos += max(pos.numel(), 1)
            num_neg += max(neg.numel(), 1)
        return out, num_pos, num_neg

    def loss(self, cls_scores, bbox_preds, gt_bboxes: Sequence[torch.Tensor], img_metas: Sequence[dict],
             gt_bboxes_ignore=None) -> dict:
        """``{'loss_rpn_cls', 'loss_rpn_bbox'}``; ``img_metas`` give ``img_shape`` and ``pad_shape`` (h, w)."""
        anchors_lvl = self.anchors(cls_scores)
        anchors = torch.cat(anchors_lvl)
        sizes = [tuple(s.shape[-2:]) for s in cls_scores]
        valid = [torch.cat(self.prior_generator.valid_flags(sizes, m["pad_shape"], anchors.device)) for m in img_metas]
        targets, num_pos, num_neg = self.get_targets(anchors, valid, gt_bboxes, [m["img_shape"] for m in img_metas],
                                                     gt_bboxes_ignore)
        avg = float(num_pos + num_neg)
        B = cls_scores[0].shape[0]
        scores = torch.cat([s.permute(0, 2, 3, 1).reshape(B, -1) for s in cls_scores], 1).reshape(-1)
        deltas = torch.cat([d.permute(0, 2, 3, 1).reshape(B, -1, 4) for d in bbox_preds], 1).reshape(-1, 4)
        labels, label_weights, bbox_targets, bbox_weights = (torch.cat([t[k] for t in targets]) for k in range(4))
        loss_cls = self.loss_cls(scores, labels, label_weights, avg_factor=avg)
        if self.reg_decoded_bbox:
            deltas = self.bbox_coder.decode(anchors.repeat(B, 1), deltas)
        loss_bbox = self.loss_bbox(deltas, bbox_targets, bbox_weights, avg_factor=avg)
        return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}

    # --- proposals -----------------------------------------------------------------------------------
    @torch.no_grad()
    def get_proposals(self, cls_scores, bbox_preds, img_metas: Sequence[dict], cfg: dict | None = None):
        """Per image an (n, 5) tensor [x1, y1, x2, y2, score], by decreasing score (see the module docstring)."""
        cfg = dict(cfg or self.test_cfg)
        anchors = self.anchors(cls_scores)
        nms_pre, min_size = cfg.get("nms_pre", -1), cfg.get("min_bbox_size", 0)
        iou, max_per_img = cfg["nms"]["iou_threshold"], cfg["max_per_img"]
        results = []
        for b, meta in enumerate(img_metas):
            lvl_scores, lvl_deltas, lvl_anchors, lvl_ids = [], [], [], []
            for lvl, (s, d) in enumerate(zip(cls_scores, bbox_preds)):
                scores = s[b].detach().permute(1, 2, 0).reshape(-1).sigmoid()
                deltas = d[b].detach().permute(1, 2, 0).reshape(-1, 4)
                anc = anchors[lvl]
                if 0 < nms_pre < scores.shape[0]:
                    scores, order = scores.sort(descending=True)
                    scores, order = scores[:nms_pre], order[:nms_pre]
                    deltas, anc = deltas[order], anc[order]
                lvl_scores.append(scores)
                lvl_deltas.append(deltas)
                lvl_anchors.append(anc)
                lvl_ids.append(torch.full_like(scores, lvl, dtype=torch.long))
            scores, ids = torch.cat(lvl_scores), torch.cat(lvl_ids)
            boxes = self.bbox_coder.decode(torch.cat(lvl_anchors), torch.cat(lvl_deltas), max_shape=meta["img_shape"])
            if min_size >= 0:
                ok = ((boxes[:, 2] - boxes[:, 0]) > min_size) & ((boxes[:, 3] - boxes[:, 1]) > min_size)
                if not bool(ok.all()):
                    boxes, scores, ids = boxes[ok], scores[ok], ids[ok]
            if boxes.numel() == 0:
                results.append(boxes.new_zeros((0, 5)))
                continue
            keep = batched_nms(boxes, scores, ids, iou)[:max_per_img]
            results.append(torch.cat([boxes[keep], scores[keep, None]], dim=1))
        return results

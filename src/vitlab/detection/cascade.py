"""Cascade Mask R-CNN (Cai & Vasconcelos, arXiv 1712.00726 / 1906.09756) with mmdetection 2.x's
``CascadeRoIHead``.

Three box stages, each with its own assigner (IoU 0.5 / 0.6 / 0.7, no low-quality matches), sampler
(512 RoIs, 25% positives, gt boxes added) and head; stage ``i``'s losses are ``s{i}.loss_cls``,
``s{i}.loss_bbox``, ``s{i}.loss_mask`` weighted by 1 / 0.5 / 0.25. Between stages the sampled RoIs are
regressed by their stage's head (class-specific heads use the gt label of positives and the arg-max
foreground class of negatives), the gt boxes the sampler added are dropped, and the result is the next
stage's proposals. There is one mask head per stage (``roi_head.mask_head.{0,1,2}``), each trained on
its stage's positives.

Inference (mmdet's ``simple_test``): the proposals pass the three box heads in turn, each refining the
RoIs by its arg-max foreground class; the classification logits of the three stages are averaged and
the last stage's boxes and NMS give the detections. Each of the three mask heads predicts on the
detections and their sigmoid probabilities are averaged (mmdet's ``merge_aug_masks``) before pasting.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vitlab.detection.mask_rcnn import (BBOX_HEAD, MASK_HEAD, MASK_ROI_EXTRACTOR, ROI_EXTRACTOR, RPN_HEAD, TEST_CFG,
                                        StandardRoIHead, TwoStageDetector, build_assigner, build_mask_head,
                                        build_roi_extractor, build_sampler, empty_result, merge_cfg)
from vitlab.heads.bbox_head import build_bbox_head
from vitlab.ops import bbox2roi

# --- mmdet's configuration (UniFormer's configs/_base_/models/cascade_mask_rcnn_uniformer_fpn.py) -----------
_STDS = ([0.1, 0.1, 0.2, 0.2], [0.05, 0.05, 0.1, 0.1], [0.033, 0.033, 0.067, 0.067])
CASCADE_RPN_HEAD = merge_cfg(RPN_HEAD, dict(loss_bbox=dict(_delete_=True, type="SmoothL1Loss", beta=1.0 / 9.0,
                                                             loss_weight=1.0)))
CASCADE_BBOX_HEADS = [merge_cfg(BBOX_HEAD, dict(
    bbox_coder=dict(target_stds=s), reg_class_agnostic=True,
    loss_bbox=dict(_delete_=True, type="SmoothL1Loss", beta=1.0, loss_weight=1.0))) for s in _STDS]
# the 3x multi-scale recipes (exp/cascade_mask_rcnn_3x_ms_hybrid_*): 4conv1fc heads with BN and GIoU on decoded boxes
CASCADE_4CONV1FC_BBOX_HEADS = [dict(
    type="ConvFCBBoxHead", num_shared_convs=4, num_shared_fcs=1, in_channels=256, conv_out_channels=256,
    fc_out_channels=1024, roi_feat_size=7, num_classes=80,
    bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=s), reg_class_agnostic=False,
    reg_decoded_bbox=True, norm_cfg=dict(type="SyncBN", requires_grad=True),
    loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
    loss_bbox=dict(type="GIoULoss", loss_weight=10.0)) for s in _STDS]
CASCADE_ROI_HEAD = dict(type="CascadeRoIHead", num_stages=3, stage_loss_weights=[1, 0.5, 0.25],
                        bbox_roi_extractor=ROI_EXTRACTOR, bbox_head=CASCADE_BBOX_HEADS,
                        mask_roi_extractor=MASK_ROI_EXTRACTOR, mask_head=MASK_HEAD)


def _rcnn_stage(iou: float) -> dict:
    return dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                              match_low_quality=False, ignore_iof_thr=-1),
                sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1,
                             add_gt_as_proposals=True),
                mask_size=28, pos_weight=-1, debug=False)


CASCADE_TRAIN_CFG = dict(
    rpn=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                           match_low_quality=True, ignore_iof_thr=-1),
             sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1, add_gt_as_proposals=False),
             allowed_border=0, pos_weight=-1, debug=False),
    rpn_proposal=dict(nms_pre=2000, max_per_img=2000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
    rcnn=[_rcnn_stage(0.5), _rcnn_stage(0.6), _rcnn_stage(0.7)])
CASCADE_TEST_CFG = copy.deepcopy(TEST_CFG)


def _per_stage(cfg, n: int, name: str) -> list:
    cfgs = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg] * n
    if len(cfgs) != n:
        raise ValueError(f"{name}: {len(cfgs)} entries for {n} stages")
    return cfgs


class CascadeRoIHead(StandardRoIHead):
    """mmdet's ``CascadeRoIHead(num_stages, stage_loss_weights, bbox_roi_extractor, bbox_head,
    mask_roi_extractor, mask_head, train_cfg, test_cfg)``; single dicts are repeated per stage,
    ``train_cfg`` is a list of per-stage ``rcnn`` dicts."""

    def __init__(self, *, num_stages: int, stage_loss_weights, bbox_roi_extractor, bbox_head,
                 mask_roi_extractor=None, mask_head=None, train_cfg=None, test_cfg=None, shared_head=None,
                 type=None, init_cfg=None):
        nn.Module.__init__(self)
        if type not in (None, "CascadeRoIHead"):
            raise ValueError(f"CascadeRoIHead got type={type!r}")
        if shared_head is not None:
            raise ValueError("shared heads are not supported in Cascade R-CNN")
        if len(stage_loss_weights) != num_stages:
            raise ValueError(f"{len(stage_loss_weights)} stage_loss_weights for {num_stages} stages")
        self.num_stages, self.stage_loss_weights = num_stages, list(stage_loss_weights)
        self.bbox_roi_extractor = nn.ModuleList(
            build_roi_extractor(c) for c in _per_stage(bbox_roi_extractor, num_stages, "bbox_roi_extractor"))
        self.bbox_head = nn.ModuleList(build_bbox_head(c) for c in _per_stage(bbox_head, num_stages, "bbox_head"))
        if mask_head is not None:
            self.mask_roi_extractor = nn.ModuleList(
                build_roi_extractor(c) for c in _per_stage(mask_roi_extractor or bbox_roi_extractor, num_stages,
                                                           "mask_roi_extractor"))
            self.mask_head = nn.ModuleList(build_mask_head(c) for c in _per_stage(mask_head, num_stages, "mask_head"))
        self.train_cfg = copy.deepcopy(_per_stage(train_cfg, num_stages, "train_cfg")) if train_cfg else None
        self.test_cfg = copy.deepcopy(test_cfg or TEST_CFG["rcnn"])
        if self.train_cfg:
            self.bbox_assigner = [build_assigner(c["assigner"]) for c in self.train_cfg]
            self.bbox_sampler = [build_sampler(c["sampler"]) for c in self.train_cfg]

    def _stage_bbox_forward(self, stage: int):
        def forward(x, rois):
            ext = self.bbox_roi_extractor[stage]
            return self.bbox_head[stage](ext(x[:ext.num_inputs], rois))
        return forward

    def _stage_mask_forward(self, stage: int):
        def forward(x, rois):
            ext = self.mask_roi_extractor[stage]
            return self.mask_head[stage](ext(x[:ext.num_inputs], rois))
        return forward

    def forward_train(self, x, img_metas, proposal_list, gt_bboxes, gt_labels, gt_bboxes_ignore=None,
                      gt_masks=None) -> dict:
        if not self.train_cfg:
            raise RuntimeError("the RoI head was built without train_cfg; it cannot compute losses")
        ignore = gt_bboxes_ignore or [None] * len(proposal_list)
        img_shapes = [m["img_shape"] for m in img_metas]
        losses = {}
        for i in range(self.num_stages):
            w, cfg, head = self.stage_loss_weights[i], self.train_cfg[i], self.bbox_head[i]
            results = self.sample(self.bbox_assigner[i], self.bbox_sampler[i], proposal_list, gt_bboxes, gt_labels,
                                  ignore)
            stage_losses, (rois, cls_score, bbox_pred, targets) = self._bbox_loss(
                head, self._stage_bbox_forward(i), x, results, cfg)
            if self.with_mask:
                stage_losses.update(self._mask_loss(self.mask_head[i], self._stage_mask_forward(i), x, results,
                                                    gt_masks, cfg))
            losses.update({f"s{i}.{k}": v * w for k, v in stage_losses.items()})
            if i < self.num_stages - 1:
                with torch.no_grad():
                    labels = targets[0]
                    labels = torch.where(labels == head.num_classes, cls_score[:, :-1].argmax(1), labels)
                    proposal_list = head.refine_bboxes(rois, labels, bbox_pred, [r.pos_is_gt for r in results],
                                                       img_shapes)
        return losses

    def _refine_test(self, x, rois, counts, img_metas):
        """Run the stages on ``rois``: (last stage's rois, stage-averaged logits, last stage's deltas)."""
        ms_scores = []
        for i in range(self.num_stages):
            cls_score, bbox_pred = self._stage_bbox_forward(i)(x, rois)
            ms_scores.append(cls_score)
            if i < self.num_stages - 1:
                refined = []
                for r, c, b, m in zip(rois.split(counts), cls_score.split(counts), bbox_pred.split(counts),
                                      img_metas):
                    if r.shape[0]:
                        refined.append(self.bbox_head[i].regress_by_class(r, c[:, :-1].argmax(1), b, m["img_shape"]))
                rois = torch.cat(refined)
        return rois, sum(ms_scores) / float(len(ms_scores)), bbox_pred

    def simple_test(self, x, proposal_list, img_metas, rescale: bool = True) -> list[dict]:
        rois = bbox2roi(proposal_list)
        device = x[0].device
        if rois.shape[0] == 0:
            return [empty_result(m, rescale, self.with_mask, device) for m in img_metas]
        counts = [p.shape[0] for p in proposal_list]
        rois, cls_score, bbox_pred = self._refine_test(x, rois, counts, img_metas)
        dets = []
        for r, c, b, m in zip(rois.split(counts), cls_score.split(counts), bbox_pred.split(counts), img_metas):
            dets.append(self.bbox_head[-1].get_bboxes(r, c, b, m["img_shape"], cfg=self.test_cfg) if r.shape[0]
                        else (r.new_zeros((0, 5)), torch.zeros(0, dtype=torch.long, device=device)))
        masks = None
        if self.with_mask:
            def probs(mask_rois):
                return sum(self._stage_mask_forward(i)(x, mask_rois).sigmoid()
                           for i in range(self.num_stages)) / self.num_stages
            masks = self.mask_probs([d[0] for d in dets], [d[1] for d in dets], probs)
        return self.format_results(dets, masks, img_metas, rescale, self.mask_head[-1] if self.with_mask else None)

    def forward_dummy(self, x, proposals: torch.Tensor) -> tuple:
        """mmdet's ``CascadeRoIHead.forward_dummy``: every stage's box head on the same RoIs, every mask head on
        the first 100."""
        rois = bbox2roi([proposals])
        outs = ()
        for i in range(self.num_stages):
            outs = outs + tuple(self._stage_bbox_forward(i)(x, rois))
        if self.with_mask:
            for i in range(self.num_stages):
                outs = outs + (self._stage_mask_forward(i)(x, rois[:100]),)
        return outs


class CascadeRCNN(TwoStageDetector):
    """Cascade (Mask) R-CNN: :class:`TwoStageDetector` with a :class:`CascadeRoIHead`."""

    roi_head_cls = CascadeRoIHead


__all__ = ["CascadeRCNN", "CascadeRoIHead", "CASCADE_RPN_HEAD", "CASCADE_ROI_HEAD", "CASCADE_TRAIN_CFG",
           "CASCADE_TEST_CFG", "CASCADE_BBOX_HEADS", "CASCADE_4CONV1FC_BBOX_HEADS"]

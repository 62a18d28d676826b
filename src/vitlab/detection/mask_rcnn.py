"""Mask R-CNN (He et al., arXiv 1703.06870) with mmdetection 2.x's ``TwoStageDetector`` / ``StandardRoIHead``.

``backbone`` (a vitlab model; its maps come from ``forward_intermediates``) -> optional ``pyramid``
(ViTDet's simple pyramid for single-scale backbones) -> ``neck`` (FPN: P2-P6) -> ``rpn_head``
(proposals) -> ``roi_head``: ``bbox_head`` on 7x7 RoIAlign features of P2-P5 and ``mask_head`` on
14x14 ones of the positives (training) or the detections (inference). Attribute and parameter names
are mmdet's, so an mmdet checkpoint's ``state_dict`` loads with ``strict=True``.

Inputs follow vitlab's detection data contract: ``images`` (B, 3, Hp, Wp) normalised and zero-padded
at the bottom/right; ``metas`` one dict per image with ``img_size`` (h, w) after resizing,
``orig_size`` (h0, w0), ``scale_factor`` (w / w0, h / h0) and ``pad_shape``; ``targets`` one dict per
image with ``boxes`` (N, 4) xyxy in resized pixels, ``labels`` (N,) in [0, K), ``masks`` (N, h, w)
uint8 and ``crowd`` (N,) bool (crowd boxes are ignored regions, used only when the assigner's
``ignore_iof_thr > 0``, as mmdet's ``gt_bboxes_ignore``).

* ``loss(images, targets, metas)`` -> ``{'loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox',
  'loss_mask', 'loss'}`` (``loss`` is the sum of the others);
* ``predict(images, metas, rescale=True)`` -> per image ``{'boxes' (n, 4) xyxy, 'scores' (n,),
  'labels' (n,), 'masks' (n, h0, w0) bool}`` in original-image pixels (resized ones with
  ``rescale=False``): score > 0.05, per-class NMS at 0.5, at most 100 (``test_cfg.rcnn``);
* ``forward_dummy(images)``: mmdet's FLOPs path (backbone, neck, RPN outputs, the box head on 1000
  fixed proposals, the mask head on the first 100). ``forward`` dispatches: with ``targets`` to
  ``loss``, with ``metas`` to ``predict``, else to ``forward_dummy``.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.detection.anchors import AnchorGenerator
from vitlab.detection.assign import MaxIoUAssigner, RandomSampler
from vitlab.detection.roi_extractor import SingleRoIExtractor
from vitlab.heads.bbox_head import build_bbox_head
from vitlab.heads.fpn_neck import FPN
from vitlab.heads.mask_head import FCNMaskHead
from vitlab.heads.rpn import RPNHead
from vitlab.models.base import VitlabModel
from vitlab.ops import bbox2roi

# --- mmdet's configuration (UniFormer's configs/_base_/models/mask_rcnn_uniformer_fpn.py) ------------------
RPN_HEAD = dict(type="RPNHead", in_channels=256, feat_channels=256,
                anchor_generator=dict(type="AnchorGenerator", scales=[8], ratios=[0.5, 1.0, 2.0],
                                      strides=[4, 8, 16, 32, 64]),
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[1.0] * 4),
                loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
                loss_bbox=dict(type="L1Loss", loss_weight=1.0))
ROI_EXTRACTOR = dict(type="SingleRoIExtractor", roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0),
                     out_channels=256, featmap_strides=[4, 8, 16, 32])
MASK_ROI_EXTRACTOR = dict(ROI_EXTRACTOR, roi_layer=dict(type="RoIAlign", output_size=14, sampling_ratio=0))
BBOX_HEAD = dict(type="Shared2FCBBoxHead", in_channels=256, fc_out_channels=1024, roi_feat_size=7, num_classes=80,
                 bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4, target_stds=[0.1, 0.1, 0.2, 0.2]),
                 reg_class_agnostic=False,
                 loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                 loss_bbox=dict(type="L1Loss", loss_weight=1.0))
MASK_HEAD = dict(type="FCNMaskHead", num_convs=4, in_channels=256, conv_out_channels=256, num_classes=80,
                 loss_mask=dict(type="CrossEntropyLoss", use_mask=True, loss_weight=1.0))
ROI_HEAD = dict(type="StandardRoIHead", bbox_roi_extractor=ROI_EXTRACTOR, bbox_head=BBOX_HEAD,
                mask_roi_extractor=MASK_ROI_EXTRACTOR, mask_head=MASK_HEAD)
RPN_TRAIN = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                               match_low_quality=True, ignore_iof_thr=-1),
                 sampler=dict(type="RandomSampler", num=256, pos_fraction=0.5, neg_pos_ub=-1,
                              add_gt_as_proposals=False),
                 allowed_border=-1, pos_weight=-1, debug=False)
RCNN_TRAIN = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                                match_low_quality=True, ignore_iof_thr=-1),
                  sampler=dict(type="RandomSampler", num=512, pos_fraction=0.25, neg_pos_ub=-1,
                               add_gt_as_proposals=True),
                  mask_size=28, pos_weight=-1, debug=False)
TRAIN_CFG = dict(rpn=RPN_TRAIN,
                 rpn_proposal=dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7),
                                   min_bbox_size=0),
                 rcnn=RCNN_TRAIN)
TEST_CFG = dict(rpn=dict(nms_pre=1000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7), min_bbox_size=0),
                rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5), max_per_img=100,
                          mask_thr_binary=0.5))


def merge_cfg(base, override):
    """mmdet-style config merge: dicts merge key by key (``_delete_=True`` replaces), anything else replaces."""
    if override is None:
        return copy.deepcopy(base)
    if isinstance(base, dict) and isinstance(override, dict):
        override = dict(override)
        if override.pop("_delete_", False):
            return copy.deepcopy(override)
        out = copy.deepcopy(base)
        for k, v in override.items():
            out[k] = merge_cfg(out[k], v) if k in out else copy.deepcopy(v)
        return out
    return copy.deepcopy(override)


# --- builders from mmdet config dicts -------------------------------------------------------------------------
def _without_type(cfg: dict, expected: Sequence[str]) -> dict:
    cfg = dict(cfg)
    kind = cfg.pop("type", expected[0])
    if kind not in expected:
        raise ValueError(f"type {kind!r} is not implemented here; expected {' or '.join(expected)}")
    return cfg


def build_neck(cfg) -> nn.Module:
    return cfg if isinstance(cfg, nn.Module) else FPN(**dict(cfg))


def build_assigner(cfg: dict) -> MaxIoUAssigner:
    return MaxIoUAssigner(**_without_type(cfg, ("MaxIoUAssigner",)))


def build_sampler(cfg: dict) -> RandomSampler:
    return RandomSampler(**_without_type(cfg, ("RandomSampler",)))


def build_rpn_head(cfg, train_cfg: dict | None = None, test_cfg: dict | None = None) -> RPNHead:
    """``RPNHead`` from mmdet's ``rpn_head`` dict, its anchor generator, and ``train_cfg.rpn``'s assigner/sampler."""
    if isinstance(cfg, nn.Module):
        return cfg
    cfg = _without_type(cfg, ("RPNHead",))
    anchors = AnchorGenerator(**_without_type(cfg.pop("anchor_generator"), ("AnchorGenerator",)))
    assigner = build_assigner(train_cfg["assigner"]) if train_cfg else None
    sampler = build_sampler(train_cfg["sampler"]) if train_cfg else None
    return RPNHead(anchor_generator=anchors, train_cfg=train_cfg, test_cfg=test_cfg, assigner=assigner,
                   sampler=sampler, **cfg)


def build_roi_extractor(cfg) -> SingleRoIExtractor:
    return cfg if isinstance(cfg, nn.Module) else SingleRoIExtractor(**dict(cfg))


def build_mask_head(cfg) -> FCNMaskHead:
    return cfg if isinstance(cfg, nn.Module) else FCNMaskHead(**dict(cfg))


# --- inputs ----------------------------------------------------------------------------------------------------
def _pair(v, name: str):
    if v is None:
        return None
    v = tuple(int(x) for x in (v.tolist() if isinstance(v, torch.Tensor) else v))
    if len(v) < 2:
        raise ValueError(f"meta {name!r} must be (h, w), got {v}")
    return v[:2]


def normalise_metas(metas: Sequence[dict] | None, images: torch.Tensor) -> list[dict]:
    """mmdet-style metas (``img_shape``, ``pad_shape``, ``ori_shape`` as (h, w), ``scale_factor`` (w, h, w, h))
    from vitlab's (``img_size``, ``pad_shape``, ``orig_size``, ``scale_factor`` (w, h)); missing sizes default to
    the batch's padded size."""
    B, _, H, W = images.shape
    if metas is None:
        metas = [{} for _ in range(B)]
    if len(metas) != B:
        raise ValueError(f"{len(metas)} metas for a batch of {B} images")
    out = []
    for m in metas:
        img = _pair(m.get("img_size", m.get("img_shape")), "img_size") or (H, W)
        pad = _pair(m.get("pad_shape"), "pad_shape") or (H, W)
        ori = _pair(m.get("orig_size", m.get("ori_shape")), "orig_size") or img
        sf = m.get("scale_factor")
        if sf is None:
            sf = (img[1] / ori[1], img[0] / ori[0])
        sf = [float(s) for s in (sf.tolist() if isinstance(sf, torch.Tensor) else (
            [sf, sf] if isinstance(sf, (int, float)) else sf))]
        if len(sf) == 2:
            sf = sf * 2
        if len(sf) != 4 or min(sf) <= 0:
            raise ValueError(f"meta 'scale_factor' must be (w_scale, h_scale) > 0, got {m.get('scale_factor')}")
        if img[0] > H or img[1] > W:
            raise ValueError(f"meta img_size {img} is larger than the batch ({H}x{W})")
        out.append({**m, "img_shape": img, "pad_shape": pad, "ori_shape": ori, "scale_factor": tuple(sf)})
    return out


def split_targets(targets: Sequence[dict], device, with_masks: bool):
    """(gt_bboxes, gt_labels, gt_bboxes_ignore, gt_masks) lists; crowd instances go to the ignore list."""
    boxes, labels, ignore, masks = [], [], [], []
    for i, t in enumerate(targets):
        b = torch.as_tensor(t["boxes"], dtype=torch.float32, device=device).reshape(-1, 4)
        lab = torch.as_tensor(t["labels"], dtype=torch.long, device=device).reshape(-1)
        if b.shape[0] != lab.shape[0]:
            raise ValueError(f"target {i}: {b.shape[0]} boxes but {lab.shape[0]} labels")
        crowd = t.get("crowd")
        crowd = torch.zeros(b.shape[0], dtype=torch.bool, device=device) if crowd is None else \
            torch.as_tensor(crowd, dtype=torch.bool, device=device).reshape(-1)
        boxes.append(b[~crowd])
        labels.append(lab[~crowd])
        ignore.append(b[crowd])
        if with_masks:
            m = t.get("masks")
            if m is None:
                raise ValueError(f"target {i} has no 'masks' but the detector has a mask head: load the data with "
                                 f"masks (with_masks=True)")
            m = torch.as_tensor(m, device=device)
            if m.shape[0] != b.shape[0]:
                raise ValueError(f"target {i}: {m.shape[0]} masks but {b.shape[0]} boxes")
            masks.append(m[~crowd])
    return boxes, labels, ignore, masks if with_masks else None


def fixed_proposals(num: int, img_h: int, img_w: int, device, dtype=torch.float32) -> torch.Tensor:
    """``num`` deterministic boxes inside an ``img_h x img_w`` image (the FLOPs path's stand-in proposals)."""
    g = torch.Generator().manual_seed(0)
    r = torch.rand(num, 4, generator=g, dtype=torch.float64)
    cx, cy = r[:, 0] * img_w, r[:, 1] * img_h
    w, h = (0.05 + 0.45 * r[:, 2]) * img_w, (0.05 + 0.45 * r[:, 3]) * img_h
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_h)
    return boxes.to(device=device, dtype=dtype)


def empty_result(meta: dict, rescale: bool, with_mask: bool, device) -> dict:
    h, w = meta["ori_shape"] if rescale else meta["img_shape"]
    out = {"boxes": torch.zeros((0, 4), device=device), "scores": torch.zeros((0,), device=device),
           "labels": torch.zeros((0,), dtype=torch.long, device=device)}
    out["masks"] = torch.zeros((0, h, w), dtype=torch.bool, device=device) if with_mask else None
    return out


# --- RoI head --------------------------------------------------------------------------------------------------
class StandardRoIHead(nn.Module):
    """mmdet's ``StandardRoIHead(bbox_roi_extractor, bbox_head, mask_roi_extractor, mask_head, train_cfg,
    test_cfg)`` (non-shared extractors); ``train_cfg``/``test_cfg`` are mmdet's ``rcnn`` dicts."""

    def __init__(self, *, bbox_roi_extractor, bbox_head, mask_roi_extractor=None, mask_head=None,
                 train_cfg: dict | None = None, test_cfg: dict | None = None, shared_head=None, type=None,
                 init_cfg=None):
        super().__init__()
        if type not in (None, "StandardRoIHead"):
            raise ValueError(f"StandardRoIHead got type={type!r}")
        if shared_head is not None:
            raise ValueError("shared heads (C4 detectors) are not implemented")
        self.bbox_roi_extractor = build_roi_extractor(bbox_roi_extractor)
        self.bbox_head = build_bbox_head(bbox_head)
        if mask_head is not None:
            self.mask_roi_extractor = build_roi_extractor(mask_roi_extractor or bbox_roi_extractor)
            self.mask_head = build_mask_head(mask_head)
        self.train_cfg, self.test_cfg = copy.deepcopy(train_cfg), copy.deepcopy(test_cfg or TEST_CFG["rcnn"])
        if train_cfg:
            self.bbox_assigner = build_assigner(train_cfg["assigner"])
            self.bbox_sampler = build_sampler(train_cfg["sampler"])

    @property
    def with_mask(self) -> bool:
        return hasattr(self, "mask_head")

    def _bbox_forward(self, x, rois):
        feats = self.bbox_roi_extractor(x[:self.bbox_roi_extractor.num_inputs], rois)
        cls_score, bbox_pred = self.bbox_head(feats)
        return cls_score, bbox_pred

    def _mask_forward(self, x, rois):
        return self.mask_head(self.mask_roi_extractor(x[:self.mask_roi_extractor.num_inputs], rois))

    def sample(self, assigner, sampler, proposals, gt_bboxes, gt_labels, gt_bboxes_ignore):
        return [sampler.sample(assigner.assign(p[:, :4], gt_bboxes[i], gt_bboxes_ignore[i], gt_labels[i]),
                               p[:, :4], gt_bboxes[i], gt_labels[i]) for i, p in enumerate(proposals)]

    def forward_train(self, x, img_metas, proposal_list, gt_bboxes, gt_labels, gt_bboxes_ignore=None,
                      gt_masks=None) -> dict:
        if not self.train_cfg:
            raise RuntimeError("the RoI head was built without train_cfg; it cannot compute losses")
        ignore = gt_bboxes_ignore or [None] * len(proposal_list)
        results = self.sample(self.bbox_assigner, self.bbox_sampler, proposal_list, gt_bboxes, gt_labels, ignore)
        losses, _ = self._bbox_loss(self.bbox_head, self._bbox_forward, x, results, self.train_cfg)
        if self.with_mask:
            losses.update(self._mask_loss(self.mask_head, self._mask_forward, x, results, gt_masks, self.train_cfg))
        return losses

    @staticmethod
    def _bbox_loss(head, forward, x, results, cfg):
        rois = bbox2roi([r.bboxes for r in results])
        cls_score, bbox_pred = forward(x, rois)
        targets = head.get_targets(results, cfg)
        return head.loss(cls_score, bbox_pred, rois, *targets), (rois, cls_score, bbox_pred, targets)

    @staticmethod
    def _mask_loss(head, forward, x, results, gt_masks, cfg):
        if gt_masks is None:
            raise ValueError("the mask head needs gt masks")
        pos_rois = bbox2roi([r.pos_bboxes for r in results])
        mask_pred = forward(x, pos_rois)
        targets = head.get_targets(results, gt_masks, cfg)
        labels = torch.cat([r.pos_gt_labels for r in results]) if results else torch.zeros(0, dtype=torch.long)
        return head.loss(mask_pred, targets, labels)

    # --- inference -------------------------------------------------------------------------------------------
    def simple_test(self, x, proposal_list, img_metas, rescale: bool = True) -> list[dict]:
        rois = bbox2roi(proposal_list)
        device = x[0].device
        if rois.shape[0] == 0:
            return [empty_result(m, rescale, self.with_mask, device) for m in img_metas]
        cls_score, bbox_pred = self._bbox_forward(x, rois)
        counts = [p.shape[0] for p in proposal_list]
        dets = []
        for r, c, b, m in zip(rois.split(counts), cls_score.split(counts), bbox_pred.split(counts), img_metas):
            dets.append(self.bbox_head.get_bboxes(r, c, b, m["img_shape"], cfg=self.test_cfg) if r.shape[0]
                        else (r.new_zeros((0, 5)), torch.zeros(0, dtype=torch.long, device=device)))
        masks = None
        if self.with_mask:
            masks = self.mask_probs([d[0] for d in dets], [d[1] for d in dets],
                                    lambda mr: self._mask_forward(x, mr).sigmoid())
        return self.format_results(dets, masks, img_metas, rescale, self.mask_head if self.with_mask else None)

    @staticmethod
    def mask_probs(det_boxes, det_labels, probs_fn):
        """Per image the (n, num_classes, 28, 28) mask probabilities of the detections."""
        mask_rois = bbox2roi(det_boxes)
        if mask_rois.shape[0] == 0:
            return [b.new_zeros((0,)) for b in det_boxes]
        return list(probs_fn(mask_rois).split([b.shape[0] for b in det_boxes]))

    def format_results(self, dets, mask_probs, img_metas, rescale, mask_head) -> list[dict]:
        out = []
        for i, ((boxes, labels), m) in enumerate(zip(dets, img_metas)):
            sf = boxes.new_tensor(m["scale_factor"])
            res = {"boxes": boxes[:, :4] / sf if rescale else boxes[:, :4], "scores": boxes[:, 4], "labels": labels}
            if mask_head is not None:
                shape = m["ori_shape"] if rescale else m["img_shape"]
                thr = self.test_cfg.get("mask_thr_binary", 0.5)
                res["masks"] = mask_head.get_seg_masks(mask_probs[i], boxes, labels, shape, thr,
                                                       scale_factor=m["scale_factor"] if rescale else None,
                                                       is_prob=True) if boxes.shape[0] else \
                    torch.zeros((0, *shape), dtype=torch.bool, device=boxes.device)
            else:
                res["masks"] = None
            out.append(res)
        return out

    def forward_dummy(self, x, proposals: torch.Tensor) -> tuple:
        rois = bbox2roi([proposals])
        outs = self._bbox_forward(x, rois)
        if self.with_mask:
            outs = outs + (self._mask_forward(x, rois[:100]),)
        return outs

    def reset_classes(self, num_classes: int) -> None:
        for head in _as_list(self.bbox_head):
            _reset_bbox_head(head, num_classes)
        if self.with_mask:
            for head in _as_list(self.mask_head):
                _reset_mask_head(head, num_classes)


def _as_list(m):
    return list(m) if isinstance(m, nn.ModuleList) else [m]


def _reset_bbox_head(head, num_classes: int) -> None:
    dev = head.fc_cls.weight.device
    head.num_classes = num_classes
    head.fc_cls = nn.Linear(head.fc_cls.in_features, num_classes + 1, device=dev)
    head.fc_reg = nn.Linear(head.fc_reg.in_features, 4 if head.reg_class_agnostic else 4 * num_classes, device=dev)
    nn.init.normal_(head.fc_cls.weight, std=0.01)
    nn.init.normal_(head.fc_reg.weight, std=0.001)
    nn.init.zeros_(head.fc_cls.bias)
    nn.init.zeros_(head.fc_reg.bias)


def _reset_mask_head(head, num_classes: int) -> None:
    old = head.conv_logits
    head.num_classes = num_classes
    head.conv_logits = nn.Conv2d(old.in_channels, 1 if head.class_agnostic else num_classes, 1,
                                 device=old.weight.device)
    nn.init.kaiming_normal_(head.conv_logits.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(head.conv_logits.bias)


# --- detector --------------------------------------------------------------------------------------------------
class TwoStageDetector(VitlabModel):
    """Backbone (+ pyramid) + neck + RPN + RoI head, mmdet's ``TwoStageDetector`` (see the module docstring).

    ``backbone_indices`` picks the backbone maps (``forward_intermediates`` indices; with a pyramid, the
    last one is used). ``train_cfg``/``test_cfg`` are mmdet's dicts (``rpn``, ``rpn_proposal``, ``rcnn``).
    """

    roi_head_cls = StandardRoIHead

    def __init__(self, backbone: nn.Module, neck, rpn_head, roi_head, *, train_cfg: dict | None = None,
                 test_cfg: dict | None = None, pyramid: nn.Module | None = None, backbone_indices=None,
                 pretrained_cfg: dict | None = None, size_divisor: int = 32):
        super().__init__()
        self.backbone = backbone
        if pyramid is not None:
            self.pyramid = pyramid
        self.backbone_indices = None if backbone_indices is None else list(backbone_indices)
        self.train_cfg, self.test_cfg = copy.deepcopy(train_cfg), copy.deepcopy(test_cfg or TEST_CFG)
        self.neck = build_neck(neck)
        train = self.train_cfg or {}
        self.rpn_head = build_rpn_head(rpn_head, train.get("rpn"), self.test_cfg.get("rpn"))
        if isinstance(roi_head, nn.Module):
            self.roi_head = roi_head
        else:
            cfg = dict(roi_head)
            cfg.setdefault("train_cfg", train.get("rcnn"))
            cfg.setdefault("test_cfg", self.test_cfg.get("rcnn"))
            self.roi_head = self.roi_head_cls(**cfg)
        self.size_divisor = size_divisor
        self.num_classes = _as_list(self.roi_head.bbox_head)[0].num_classes
        self.num_features = self.neck.out_channels
        info = list(getattr(backbone, "feature_info", []) or [])
        if info and self.backbone_indices is not None:
            info = [info[i] for i in self.backbone_indices]
        self.feature_info = info
        self.pretrained_cfg = dict(pretrained_cfg or {})

    # --- VitlabModel API ---------------------------------------------------------------------------------------
    @property
    def with_mask(self) -> bool:
        return self.roi_head.with_mask

    def extract_feat(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The neck's maps (P2..P6) of a (B, 3, H, W) batch."""
        feats = self.backbone.forward_intermediates(images, self.backbone_indices)
        if hasattr(self, "pyramid"):
            feats = self.pyramid(feats[-1])
        return self.neck(feats)

    def forward_features(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.extract_feat(self._pad(images))

    def forward_intermediates(self, images: torch.Tensor, indices=None) -> list[torch.Tensor]:
        """The backbone's maps."""
        return self.backbone.forward_intermediates(images, indices)

    def forward_head(self, feats, pre_logits: bool = False):
        """RPN outputs (per-level scores, deltas) of neck maps; ``pre_logits`` returns the maps themselves."""
        return feats if pre_logits else self.rpn_head(feats)

    def reset_classifier(self, num_classes: int) -> None:
        """Fresh class-specific layers (``fc_cls``, ``fc_reg``, ``conv_logits``) for ``num_classes``."""
        self.roi_head.reset_classes(num_classes)
        self.num_classes = num_classes
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def get_classifier(self) -> nn.Module:
        return self.roi_head

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.backbone.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        nwd = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in nwd}

    # --- training / inference ----------------------------------------------------------------------------------
    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError(f"{type(self).__name__} expects images of shape (B, 3, H, W), got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        d = self.size_divisor
        ph, pw = (-images.shape[-2]) % d, (-images.shape[-1]) % d
        return F.pad(images, (0, pw, 0, ph)) if ph or pw else images

    def loss(self, images: torch.Tensor, targets: Sequence[dict], metas: Sequence[dict] | None = None) -> dict:
        """Named loss terms and their sum under ``'loss'`` (see the module docstring)."""
        if len(targets) != images.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {images.shape[0]} images")
        metas = normalise_metas(metas, images)
        images = self._pad(images)
        gt_bboxes, gt_labels, gt_ignore, gt_masks = split_targets(targets, images.device, self.with_mask)
        x = self.extract_feat(images)
        cls_scores, bbox_preds = self.rpn_head(x)
        losses = self.rpn_head.loss(cls_scores, bbox_preds, gt_bboxes, metas, gt_ignore)
        proposal_cfg = (self.train_cfg or {}).get("rpn_proposal", self.test_cfg.get("rpn"))
        proposals = self.rpn_head.get_proposals(cls_scores, bbox_preds, metas, proposal_cfg)
        losses.update(self.roi_head.forward_train(x, metas, proposals, gt_bboxes, gt_labels, gt_ignore, gt_masks))
        losses["loss"] = sum(v for k, v in losses.items() if "loss" in k)
        return losses

    @torch.no_grad()
    def predict(self, images: torch.Tensor, metas: Sequence[dict] | None = None, rescale: bool = True) -> list[dict]:
        """Detections per image (see the module docstring)."""
        metas = normalise_metas(metas, images)
        x = self.extract_feat(self._pad(images))
        cls_scores, bbox_preds = self.rpn_head(x)
        proposals = self.rpn_head.get_proposals(cls_scores, bbox_preds, metas, self.test_cfg.get("rpn"))
        return self.roi_head.simple_test(x, proposals, metas, rescale=rescale)

    def forward_dummy(self, images: torch.Tensor) -> tuple:
        """mmdet's FLOPs path: neck maps -> RPN outputs -> RoI heads on 1000 fixed proposals (masks: first 100)."""
        images = self._pad(images)
        x = self.extract_feat(images)
        cls_scores, bbox_preds = self.rpn_head(x)
        proposals = fixed_proposals(1000, images.shape[-2], images.shape[-1], images.device, x[0].dtype)
        return (*cls_scores, *bbox_preds, *self.roi_head.forward_dummy(x, proposals))

    def forward(self, images: torch.Tensor, metas: Sequence[dict] | None = None, targets: Sequence[dict] | None = None):
        """``loss`` with ``targets``, ``predict`` with ``metas`` only, else ``forward_dummy``."""
        if targets is not None:
            return self.loss(images, targets, metas)
        if metas is not None:
            return self.predict(images, metas)
        return self.forward_dummy(images)


class MaskRCNN(TwoStageDetector):
    """Mask R-CNN: :class:`TwoStageDetector` with a :class:`StandardRoIHead`."""

    roi_head_cls = StandardRoIHead

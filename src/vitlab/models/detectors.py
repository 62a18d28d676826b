"""Detector families ``mask_rcnn`` and ``cascade_mask_rcnn`` on any vitlab backbone, and their variants.

``create_model("mask_rcnn", backbone="uniformer_small", backbone_kwargs=dict(hybrid=True, window_size=14),
num_classes=80, neck=..., rpn_head=..., roi_head=..., train_cfg=..., test_cfg=...)``: the keyword arguments
are mmdetection config dicts merged into the defaults (UniFormer's ``mask_rcnn_uniformer_fpn.py`` /
``cascade_mask_rcnn_uniformer_fpn.py``: dicts merge key by key, ``_delete_=True`` replaces, lists
replace), so an official config maps onto them one to one. ``num_classes`` is written into every box and
mask head.

Backbones: UniFormer (any ``uniformer*`` name or the ``uniformer`` family) is built as the dense
detection backbone (``dense=True``: per-stage LayerNorms ``norm1..4``, keys as the official mmdet
UniFormer). Hierarchical backbones (strictly increasing ``feature_info`` strides: UniFormer, Swin, Pale)
feed all their maps to the FPN; single-scale ones (plain ViT, VOLO) go through ViTDet's simple feature
pyramid on their last map (``pyramid``) and a ``SimFPN`` neck (1x1 + 3x3 convs with LayerNorm, no top-down).
Other backbones are built with ``num_classes=0`` (their classifier-only parts, e.g. Swin's/Pale's final
norm or VOLO's class-attention blocks, then get no gradient). ``pretrained_cfg`` keeps the backbone's
mean/std (ImageNet: mmdet's 123.675/116.28/103.53 and 58.395/57.12/57.375 on 0-255) with mmdet's
test size ``input_size=(3, 800, 1333)``.

GMACs of the variants are multiply-adds of ``forward_dummy`` (mmdet's ``get_flops.py`` path: 1000
proposals, 100 masks) on a 1280x800 input through :func:`vitlab.bench.flops.count_macs` (matrix
products and convolutions only; RoIAlign, NMS, norms and activations are not counted).
"""
from __future__ import annotations

import copy

from vitlab.detection.cascade import (CASCADE_4CONV1FC_BBOX_HEADS, CASCADE_ROI_HEAD, CASCADE_RPN_HEAD,
                                      CASCADE_TEST_CFG, CASCADE_TRAIN_CFG, CascadeRCNN)
from vitlab.detection.mask_rcnn import RPN_HEAD, ROI_HEAD, TEST_CFG, TRAIN_CFG, MaskRCNN, merge_cfg
from vitlab.detection.pyramid import SimpleFeaturePyramid
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD
from vitlab.models.registry import create_model, get_entry, register_family, register_model, with_any_input_size

DETECTION_INPUT_SIZE = (3, 800, 1333)
DETECTION_FLOPS_SIZE = (3, 800, 1280)      # the size mmdetection's get_flops (and the papers' tables) count at


def build_backbone(name: str, kwargs: dict | None = None):
    """A vitlab backbone for detection: UniFormer as its dense variant, others without classifier."""
    kwargs = dict(kwargs or {})
    family = get_entry(name).family
    if family == "uniformer":
        kwargs.setdefault("dense", True)
    elif family != "uniformer_dense":
        kwargs = with_any_input_size(name, {"num_classes": 0, **kwargs})
    model = create_model(name, **kwargs)
    if not getattr(model, "feature_info", None) or not hasattr(model, "forward_intermediates"):
        raise ValueError(f"backbone {name!r} declares no feature_info / forward_intermediates; it cannot feed "
                         f"a detector")
    return model


def _set_classes(cfg, num_classes: int):
    if isinstance(cfg, list):
        return [_set_classes(c, num_classes) for c in cfg]
    return {**cfg, "num_classes": num_classes}


def _output_strides(strides: list[int], num_outs: int, start_level: int = 0) -> list[int]:
    out = list(strides[start_level:])[:num_outs]
    while len(out) < num_outs:
        out.append(out[-1] * 2)
    return out


def _build(cls, backbone: str, backbone_kwargs: dict | None, num_classes: int, neck, rpn_head, roi_head,
           train_cfg, test_cfg, pyramid, defaults: dict):
    bb = build_backbone(backbone, backbone_kwargs)
    info = bb.feature_info
    reductions = [int(f["reduction"]) for f in info]
    hierarchical = all(b > a for a, b in zip(reductions, reductions[1:]))
    use_pyramid = (not hierarchical) if pyramid is None else bool(pyramid)
    pyr, indices = None, None
    if use_pyramid:
        scales = pyramid.get("scale_factors") if isinstance(pyramid, dict) else None
        pyr = SimpleFeaturePyramid(info[-1]["channels"], reductions[-1], scales) if scales else \
            SimpleFeaturePyramid.for_strides(info[-1]["channels"], reductions[-1])
        in_channels, strides, indices = pyr.out_channels, pyr.strides, [len(info) - 1]
        neck_default = dict(type="SimFPN", in_channels=in_channels, out_channels=256, num_outs=5,
                            norm_cfg=dict(type="LN"))
    else:
        in_channels, strides = [int(f["channels"]) for f in info], reductions
        neck_default = dict(type="FPN", in_channels=in_channels, out_channels=256, num_outs=5)
    neck_cfg = merge_cfg(neck_default, neck)
    if list(neck_cfg["in_channels"]) != list(in_channels):
        raise ValueError(f"neck in_channels {list(neck_cfg['in_channels'])} differ from the backbone maps' "
                         f"{list(in_channels)} ({backbone})")
    rpn_cfg = merge_cfg(defaults["rpn_head"], rpn_head)
    roi_cfg = merge_cfg(defaults["roi_head"], roi_head)
    roi_cfg["bbox_head"] = _set_classes(roi_cfg["bbox_head"], num_classes)
    if roi_cfg.get("mask_head") is not None:
        roi_cfg["mask_head"] = _set_classes(roi_cfg["mask_head"], num_classes)
    out_strides = _output_strides(strides, neck_cfg["num_outs"], neck_cfg.get("start_level", 0))
    anchor_strides = [s if isinstance(s, int) else s[0] for s in rpn_cfg["anchor_generator"]["strides"]]
    if anchor_strides != out_strides:
        raise ValueError(f"the neck's maps have strides {out_strides} ({backbone}) but the anchor generator expects "
                         f"{anchor_strides}: set rpn_head.anchor_generator.strides")
    for key in ("bbox_roi_extractor", "mask_roi_extractor"):
        ext = roi_cfg.get(key)
        if ext is not None and list(ext["featmap_strides"]) != out_strides[:len(ext["featmap_strides"])]:
            raise ValueError(f"roi_head.{key}.featmap_strides {list(ext['featmap_strides'])} do not match the "
                             f"neck's strides {out_strides}")
    cfg = dict(getattr(bb, "pretrained_cfg", {}) or {})
    pretrained_cfg = {"input_size": DETECTION_INPUT_SIZE, "mean": tuple(cfg.get("mean", IMAGENET_MEAN)),
                      "std": tuple(cfg.get("std", IMAGENET_STD)), "crop_pct": 1.0, "interpolation": "bilinear",
                      "num_classes": num_classes, "img_scale": (1333, 800), "size_divisor": 32, "task": "detection",
                      "flops_input_size": DETECTION_FLOPS_SIZE}
    model = cls(bb, neck_cfg, rpn_cfg, roi_cfg, train_cfg=merge_cfg(defaults["train_cfg"], train_cfg),
                test_cfg=merge_cfg(defaults["test_cfg"], test_cfg), pyramid=pyr, backbone_indices=indices,
                pretrained_cfg=pretrained_cfg)
    model.backbone_name = backbone
    return model


MASK_RCNN_DEFAULTS = dict(rpn_head=RPN_HEAD, roi_head=ROI_HEAD, train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
CASCADE_DEFAULTS = dict(rpn_head=CASCADE_RPN_HEAD, roi_head=CASCADE_ROI_HEAD, train_cfg=CASCADE_TRAIN_CFG,
                        test_cfg=CASCADE_TEST_CFG)


def mask_rcnn(backbone: str = "uniformer_small", backbone_kwargs: dict | None = None, num_classes: int = 80,
              neck: dict | None = None, rpn_head: dict | None = None, roi_head: dict | None = None,
              train_cfg: dict | None = None, test_cfg: dict | None = None, pyramid=None) -> MaskRCNN:
    """Mask R-CNN (FPN, 1x heads) on a vitlab backbone: mask_rcnn(backbone='uniformer_small', num_classes=80)."""
    return _build(MaskRCNN, backbone, backbone_kwargs, num_classes, neck, rpn_head, roi_head, train_cfg, test_cfg,
                  pyramid, MASK_RCNN_DEFAULTS)


def cascade_mask_rcnn(backbone: str = "uniformer_small", backbone_kwargs: dict | None = None, num_classes: int = 80,
                      neck: dict | None = None, rpn_head: dict | None = None, roi_head: dict | None = None,
                      train_cfg: dict | None = None, test_cfg: dict | None = None, pyramid=None) -> CascadeRCNN:
    """Cascade Mask R-CNN (3 stages) on a vitlab backbone: cascade_mask_rcnn(backbone='uniformer_small')."""
    return _build(CascadeRCNN, backbone, backbone_kwargs, num_classes, neck, rpn_head, roi_head, train_cfg, test_cfg,
                  pyramid, CASCADE_DEFAULTS)


register_family("mask_rcnn", mask_rcnn)
register_family("cascade_mask_rcnn", cascade_mask_rcnn)


def _variant(builder, backbone: str, backbone_kwargs: dict, kwargs: dict, **defaults):
    kwargs = dict(kwargs)
    bk = {**backbone_kwargs, **(kwargs.pop("backbone_kwargs", None) or {})}
    return builder(**{"backbone": backbone, "backbone_kwargs": bk, **defaults, **kwargs})


_H14 = dict(hybrid=True, window_size=14)
_3X_HEADS = dict(bbox_head=copy.deepcopy(CASCADE_4CONV1FC_BBOX_HEADS))


@register_model(family="mask_rcnn")
def mask_rcnn_uniformer_small_h14(**kwargs):
    """Mask R-CNN 1x, UniFormer-S h14 (hybrid, window 14, drop path 0.2): 41.2M params, 268.8 GMACs at 1280x800."""
    return _variant(mask_rcnn, "uniformer_small", {**_H14, "drop_path_rate": 0.2}, kwargs)


@register_model(family="mask_rcnn")
def mask_rcnn_uniformer_base_h14(**kwargs):
    """Mask R-CNN 1x, UniFormer-B h14 (hybrid, window 14, drop path 0.3): 69.4M params, 399.6 GMACs at 1280x800."""
    return _variant(mask_rcnn, "uniformer_base", {**_H14, "drop_path_rate": 0.3}, kwargs)


@register_model(family="cascade_mask_rcnn")
def cascade_mask_rcnn_uniformer_small_h14(**kwargs):
    """Cascade Mask R-CNN 3x (4conv1fc+BN, GIoU), UniFormer-S h14 (drop path 0.2): 79.0M params, 747.1 GMACs."""
    return _variant(cascade_mask_rcnn, "uniformer_small", {**_H14, "drop_path_rate": 0.2}, kwargs, roi_head=_3X_HEADS)


@register_model(family="cascade_mask_rcnn")
def cascade_mask_rcnn_uniformer_base_h14(**kwargs):
    """Cascade Mask R-CNN 3x (4conv1fc+BN, GIoU), UniFormer-B h14 (drop path 0.4): 107.3M params, 877.8 GMACs."""
    return _variant(cascade_mask_rcnn, "uniformer_base", {**_H14, "drop_path_rate": 0.4}, kwargs, roi_head=_3X_HEADS)


@register_model(family="mask_rcnn")
def mask_rcnn_swin_tiny(**kwargs):
    """Mask R-CNN 1x, Swin-T (drop path 0.2): 47.8M params, 266.6 GMACs at 1280x800."""
    return _variant(mask_rcnn, "swin_tiny", {"drop_path_rate": 0.2}, kwargs)


@register_model(family="mask_rcnn")
def mask_rcnn_pale_tiny(**kwargs):
    """Mask R-CNN 1x, Pale-T (drop path 0.2): 41.4M params, 299.1 GMACs at 1280x800."""
    return _variant(mask_rcnn, "pale_tiny", {"drop_path_rate": 0.2}, kwargs)


@register_model(family="mask_rcnn")
def mask_rcnn_vit_base(**kwargs):
    """Mask R-CNN 1x heads on ViT-B/16 + ViTDet simple pyramid + SimFPN (drop path 0.1): 108.9M params, 825.1 GMACs."""
    return _variant(mask_rcnn, "vit_base_patch16", {"drop_path_rate": 0.1}, kwargs)


# The micro detector trains on ~192 px images on a CPU: anchors of 16-256 px (scales [4] at strides 4-64)
# instead of 32-512 px; 1000 pre-NMS RPN boxes per level and 500 proposals per image in training (mmdet:
# 2000 / 1000) and 256 sampled RoIs per image (mmdet: 512), which the small images do not need.
MICRO_WIDTH = 64
MICRO_CFG = dict(
    num_classes=5,
    train_cfg=dict(rpn_proposal=dict(nms_pre=1000, max_per_img=500), rcnn=dict(sampler=dict(num=256))),
    neck=dict(out_channels=MICRO_WIDTH),
    rpn_head=dict(in_channels=MICRO_WIDTH, feat_channels=MICRO_WIDTH, anchor_generator=dict(scales=[4])),
    roi_head=dict(bbox_roi_extractor=dict(out_channels=MICRO_WIDTH), mask_roi_extractor=dict(out_channels=MICRO_WIDTH),
                  bbox_head=dict(in_channels=MICRO_WIDTH, fc_out_channels=256),
                  mask_head=dict(in_channels=MICRO_WIDTH, conv_out_channels=MICRO_WIDTH)))


@register_model(family="mask_rcnn")
def mask_rcnn_micro(**kwargs):
    """Micro Mask R-CNN for tests and CPU runs (uniformer_micro, FPN 64, fc 256, mask convs 64, anchors 16-256 px)."""
    cfg = {k: merge_cfg(v, kwargs.pop(k, None)) for k, v in MICRO_CFG.items()}
    model = _variant(mask_rcnn, "uniformer_micro", {}, kwargs, **cfg)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 192, 192), "img_scale": (192, 192),
                            "flops_input_size": (3, 192, 192)}
    return model

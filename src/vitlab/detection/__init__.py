"""Two-stage instance detectors (Mask R-CNN, Cascade Mask R-CNN) in mmdetection 2.x's layout: anchors,
box assignment and sampling, RoI feature extraction, ViTDet's simple feature pyramid.

Build registered detectors with ``vitlab.create_model("mask_rcnn_uniformer_small_h14")`` or the families
``mask_rcnn(backbone=..., ...)`` / ``cascade_mask_rcnn(...)`` (see :mod:`vitlab.models.detectors`).
"""
from .anchors import AnchorGenerator, anchor_inside_flags
from .assign import AssignResult, MaxIoUAssigner, RandomSampler, SamplingResult
from .cascade import CascadeRCNN, CascadeRoIHead
from .mask_rcnn import MaskRCNN, StandardRoIHead, TwoStageDetector
from .pyramid import SimpleFeaturePyramid
from .roi_extractor import SingleRoIExtractor, map_roi_levels

__all__ = ["AnchorGenerator", "anchor_inside_flags", "AssignResult", "MaxIoUAssigner", "RandomSampler",
           "SamplingResult", "CascadeRCNN", "CascadeRoIHead", "MaskRCNN", "StandardRoIHead", "TwoStageDetector",
           "SimpleFeaturePyramid", "SingleRoIExtractor", "map_roi_levels"]

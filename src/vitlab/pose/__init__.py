"""Top-down human pose estimation (SimpleBaseline heatmaps, mmpose 0.x conventions).

* :mod:`~vitlab.pose.targets`: crop geometry (center / scale, the affine matrix) and Gaussian targets;
* :mod:`~vitlab.pose.decode`: heatmaps -> keypoints (argmax, quarter-pixel shift, back to the image), flip-back;
* :mod:`~vitlab.pose.topdown`: :class:`TopDownPose` (backbone + heatmap head), :func:`build_topdown`;
* :mod:`~vitlab.pose.data`: :class:`TopDownCocoKeypoints` crops with mmpose's augmentations, :func:`collate_topdown`;
* :mod:`~vitlab.pose.evaluation`: rescoring, OKS-NMS and OKS keypoint AP by pycocotools.
"""
from vitlab.pose.data import TopDownCocoKeypoints, collate_topdown
from vitlab.pose.decode import flip_back, keypoints_from_heatmaps
from vitlab.pose.evaluation import COCO_SIGMAS, evaluate_keypoints, keypoint_results, oks_nms, rescore_and_nms
from vitlab.pose.targets import (COCO_FLIP_PAIRS, COCO_KEYPOINT_NAMES, affine_matrix, box_to_center_scale,
                                 gaussian_targets)
from vitlab.pose.topdown import UNIFORMER_POSE_CONFIGS, TopDownPose, build_topdown

__all__ = ["TopDownCocoKeypoints", "collate_topdown", "flip_back", "keypoints_from_heatmaps", "COCO_SIGMAS",
           "evaluate_keypoints", "keypoint_results", "oks_nms", "rescore_and_nms", "COCO_FLIP_PAIRS",
           "COCO_KEYPOINT_NAMES", "affine_matrix", "box_to_center_scale", "gaussian_targets",
           "UNIFORMER_POSE_CONFIGS", "TopDownPose", "build_topdown"]

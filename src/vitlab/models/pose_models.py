"""Registered top-down pose models: a backbone plus mmpose's deconvolution heatmap head.

``create_model("topdown_pose", backbone="uniformer_small", backbone_kwargs={...})`` builds
:func:`vitlab.pose.topdown.build_topdown` through the registry, so a trained pose model saves and
reloads as a model folder (``save_pretrained`` / ``from_pretrained``) like every other model.
"""
from __future__ import annotations

from vitlab.models.registry import register_family, register_model


def topdown_pose(backbone: str = "uniformer_small", backbone_kwargs: dict | None = None, num_keypoints: int = 17,
                 input_size=(192, 256), **head_kwargs):
    """Top-down pose: ``backbone`` (a registered name) + TopdownHeatmapSimpleHead (mmpose names)."""
    from vitlab.pose.topdown import build_topdown
    return build_topdown(backbone, backbone_kwargs, num_keypoints=num_keypoints, input_size=tuple(input_size),
                         **head_kwargs)


register_family("topdown_pose", topdown_pose, doc="top-down pose: a backbone + mmpose's deconvolution heatmap head")


@register_model(family="topdown_pose")
def topdown_uniformer_small(**kwargs):
    """UniFormer-S (dense, global stage 3) top-down pose at 256x192: the official COCO recipe's model."""
    return topdown_pose(**{"backbone": "uniformer_small", "backbone_kwargs": {"dense": True, "drop_path_rate": 0.2},
                           **kwargs})


@register_model(family="topdown_pose")
def topdown_uniformer_base(**kwargs):
    """UniFormer-B (dense, global stage 3) top-down pose at 256x192."""
    return topdown_pose(**{"backbone": "uniformer_base", "backbone_kwargs": {"dense": True, "drop_path_rate": 0.3},
                           **kwargs})


@register_model(family="topdown_pose")
def topdown_micro(**kwargs):
    """A micro top-down pose model on ``uniformer_micro`` (dense; 64-filter deconvolutions) for tests and CPU runs."""
    return topdown_pose(**{"backbone": "uniformer_micro", "backbone_kwargs": {"dense": True},
                           "num_deconv_filters": [64, 64, 64], **kwargs})

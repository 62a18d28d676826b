"""Top-down pose estimation: a backbone + the SimpleBaseline heatmap head (mmpose 0.x's ``TopDown``).

``TopDownPose(backbone, keypoint_head)`` reads the backbone's last feature map
(``forward_intermediates(x, 1)[-1]``; stride 32 for the three-deconvolution head) and predicts one
heatmap per keypoint at stride 4 (64 x 48 for a 256 x 192 crop). Attributes are mmpose's, so an
official checkpoint (``backbone.*``, ``keypoint_head.*``) loads with ``strict=True``; for the
official UniFormer pose models the backbone is vitlab's dense UniFormer (per-stage LayerNorms; the
official pose backbone returns the last stage after ``norm4``).

* ``loss(images, target, target_weight)``: ``JointsMSELoss(use_target_weight=True)`` (mean over
  batch, joints and pixels of ``(w * (pred - target))**2``) as ``loss_mse`` and ``loss``, plus
  ``acc_pose`` (mmpose's PCK at 0.5 of the heatmap argmaxes, detached; not part of ``loss``).
* ``predict_heatmaps(images, flip=True)``: the test-time flip of mmpose (``flip_test=True,
  shift_heatmap=True``): the mean of the heatmaps and the flipped-back heatmaps of the mirrored input.
* ``predict(images, metas, flip=True)``: keypoints (N, K, 3) (x, y, score) in original image
  pixels (``post_process='default'``) and the box scores (N,), from each meta's ``center``,
  ``scale`` (units of 200 px) and ``bbox_score``.

The official configs (``Sense-X/UniFormer`` ``pose_estimation/exp/top_down_*``) are in
:data:`UNIFORMER_POSE_CONFIGS`; :func:`build_topdown` builds any of them, or any vitlab backbone.
"""
from __future__ import annotations

import torch
from torch import nn

from vitlab.heads.pose_heatmap import TopdownHeatmapSimpleHead
from vitlab.models.base import VitlabModel
from vitlab.pose.decode import flip_back, heatmap_argmax, keypoints_from_heatmaps
from vitlab.pose.targets import COCO_FLIP_PAIRS

# name -> backbone family, its kwargs, and the data settings of the official config
_SMALL = dict(backbone="uniformer_dense", backbone_kwargs=dict(layers=[3, 4, 8, 3], embed_dim=[64, 128, 320, 512],
                                                               head_dim=64, drop_path_rate=0.2))
_BASE = dict(backbone="uniformer_dense", backbone_kwargs=dict(layers=[5, 8, 20, 7], embed_dim=[64, 128, 320, 512],
                                                              head_dim=64, drop_path_rate=0.4))
UNIFORMER_POSE_CONFIGS = {
    "uniformer_small_pose_256x192": dict(**_SMALL, input_size=(192, 256), heatmap_size=(48, 64), sigma=2),
    "uniformer_small_pose_384x288": dict(**_SMALL, input_size=(288, 384), heatmap_size=(72, 96), sigma=3),
    "uniformer_small_pose_448x320": dict(**_SMALL, input_size=(320, 448), heatmap_size=(80, 112), sigma=3),
    "uniformer_base_pose_256x192": dict(**_BASE, input_size=(192, 256), heatmap_size=(48, 64), sigma=2),
}


def joints_mse_loss(output: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor) -> torch.Tensor:
    """mmpose's ``JointsMSELoss(use_target_weight=True)``: mean of ``(w * (output - target))**2``."""
    if output.shape != target.shape:
        raise ValueError(f"heatmaps {tuple(output.shape)} and targets {tuple(target.shape)} differ in shape")
    w = target_weight.reshape(*output.shape[:2], 1, 1).to(output.dtype)
    return ((output * w - target.to(output.dtype) * w) ** 2).mean()


@torch.no_grad()
def pose_pck_accuracy(output: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, thr: float = 0.5):
    """mmpose's ``pose_pck_accuracy`` on heatmaps: fraction of argmaxes within ``thr`` of the target's.

    Distances are divided by (H / 10, W / 10) (mmpose's order, applied to (x, y)); the mean is over
    keypoints with at least one valid (``mask``) instance. Returns a float tensor (0 when none is valid).
    """
    N, K, H, W = output.shape
    pred, _ = heatmap_argmax(output.float())
    gt, _ = heatmap_argmax(target.float())
    norm = torch.tensor([H / 10, W / 10], device=output.device)
    dist = ((pred - gt) / norm).norm(dim=-1)  # (N, K)
    mask = mask.reshape(N, K).bool()
    valid = mask.sum(0)
    hits = ((dist < thr) & mask).sum(0)
    per_kpt = hits.float() / valid.clamp(min=1)
    has = (valid > 0).float()                      # mean over the keypoints that have a target (0 if none);
    return (per_kpt * has).sum() / has.sum().clamp(min=1)   # no data-dependent indexing: one compiled graph


class TopDownPose(VitlabModel):
    """``backbone`` (a vitlab model with ``forward_intermediates``) + ``keypoint_head`` (heatmaps)."""

    def __init__(self, backbone: nn.Module, keypoint_head: nn.Module, flip_pairs=COCO_FLIP_PAIRS,
                 shift_heatmap: bool = True, post_process: str | None = "default", input_size=(192, 256)):
        super().__init__()
        self.backbone, self.keypoint_head = backbone, keypoint_head
        self.flip_pairs = tuple(tuple(p) for p in flip_pairs)
        self.shift_heatmap, self.post_process = shift_heatmap, post_process
        self.num_keypoints = getattr(keypoint_head, "out_channels", 17)
        self.num_features = getattr(backbone, "num_features", 0)
        self.feature_info = list(getattr(backbone, "feature_info", []) or [])
        cfg = dict(getattr(backbone, "pretrained_cfg", {}) or {})
        w, h = int(input_size[0]), int(input_size[1])
        self.input_size = (w, h)                       # the crop: width, height
        self.pretrained_cfg = {**cfg, "input_size": (3, h, w), "num_classes": 0, "task": "pose",
                               "num_keypoints": self.num_keypoints}

    # --- API -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {f"backbone.{n}" for n in getattr(self.backbone, "no_weight_decay", lambda: set())()}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.backbone.set_grad_checkpointing(enable)

    def get_classifier(self) -> nn.Module:
        return self.keypoint_head

    def forward_intermediates(self, images: torch.Tensor, indices=None) -> list[torch.Tensor]:
        return self.backbone.forward_intermediates(images, indices)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last map (B, C, H / 32, W / 32)."""
        return self.backbone.forward_intermediates(images, 1)[-1]

    def forward_head(self, feats: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return feats if pre_logits else self.keypoint_head(feats)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw heatmaps (B, K, H / 4, W / 4), the same in training and eval mode (no flip)."""
        return self.keypoint_head(self.forward_features(images))

    def forward_dummy(self, images: torch.Tensor) -> torch.Tensor:
        """mmpose's FLOPs path: backbone + head, once."""
        return self(images)

    def loss(self, images: torch.Tensor, target_heatmaps: torch.Tensor,
             target_weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{"loss_mse", "loss", "acc_pose"}`` for a batch of crops, Gaussian targets and joint weights (B, K, 1)."""
        out = self(images)
        if out.shape[-2:] != target_heatmaps.shape[-2:]:
            h, w = out.shape[-2:]
            raise ValueError(f"the head predicts {h}x{w} heatmaps for {images.shape[-2]}x{images.shape[-1]} crops but "
                             f"the targets are {target_heatmaps.shape[-2]}x{target_heatmaps.shape[-1]}: set the heatmap "
                             f"size to [{w}, {h}] (width, height), or make the crop a multiple of the backbone's stride")
        mse = joints_mse_loss(out.float(), target_heatmaps, target_weight)
        acc = pose_pck_accuracy(out.detach(), target_heatmaps, target_weight.reshape(out.shape[:2]) > 0)
        return {"loss_mse": mse, "loss": mse, "acc_pose": acc.detach()}

    @torch.no_grad()
    def predict_heatmaps(self, images: torch.Tensor, flip: bool = True, flip_pairs=None) -> torch.Tensor:
        """Heatmaps (B, K, h, w) in float32; ``flip=True`` averages with the flipped-back mirrored input."""
        heatmaps = self(images).float()
        if flip:
            pairs = self.flip_pairs if flip_pairs is None else flip_pairs
            flipped = flip_back(self(images.flip(-1)).float(), pairs, shift=self.shift_heatmap)
            heatmaps = (heatmaps + flipped) * 0.5
        return heatmaps

    @torch.no_grad()
    def predict(self, images: torch.Tensor, metas: list[dict], flip: bool = True):
        """(keypoints (N, K, 3): x, y in original image pixels + score, box scores (N,)), on the CPU."""
        if len(metas) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} crops but {len(metas)} metas")
        heatmaps = self.predict_heatmaps(images, flip=flip).cpu()
        center = torch.tensor([list(m["center"]) for m in metas], dtype=torch.float64)
        scale = torch.tensor([list(m["scale"]) for m in metas], dtype=torch.float64)
        xy, scores = keypoints_from_heatmaps(heatmaps, center, scale, self.post_process)
        box_scores = torch.tensor([float(m.get("bbox_score", 1.0)) for m in metas])
        return torch.cat([xy, scores], dim=-1), box_scores


def build_topdown(backbone_name: str, backbone_kwargs: dict | None = None, num_keypoints: int = 17,
                  input_size=(192, 256), num_deconv_layers: int | None = None, flip_pairs=None,
                  **head_kwargs) -> TopDownPose:
    """A :class:`TopDownPose` on ``create_model(backbone_name, num_classes=0, **backbone_kwargs)``.

    The head reads the backbone's last map; by default it has three deconvolutions for a stride-32
    map (stride 4 heatmaps) and ``log2(stride / 4)`` otherwise. For the official UniFormer pose
    models use the family ``uniformer_dense`` (or a UniFormer variant with ``dense=True``), e.g. the
    entries of :data:`UNIFORMER_POSE_CONFIGS`. ``flip_pairs`` defaults to COCO's for 17 keypoints
    and to none otherwise.
    """
    from vitlab.models.registry import create_model
    backbone = create_model(backbone_name, num_classes=0, **dict(backbone_kwargs or {}))
    info = getattr(backbone, "feature_info", None)
    if not info:
        raise ValueError(f"backbone {backbone_name!r} declares no feature_info; it cannot feed a heatmap head")
    channels, reduction = info[-1]["channels"], info[-1]["reduction"]
    if num_deconv_layers is None:
        num_deconv_layers = max(0, (reduction // 4).bit_length() - 1)
        if 4 * 2 ** num_deconv_layers != reduction:
            raise ValueError(f"the last map of {backbone_name!r} has stride {reduction}; pass num_deconv_layers")
    filters = tuple(head_kwargs.pop("num_deconv_filters", (256,) * num_deconv_layers))
    kernels = tuple(head_kwargs.pop("num_deconv_kernels", (4,) * num_deconv_layers))
    head = TopdownHeatmapSimpleHead(channels, num_keypoints, num_deconv_layers, filters, kernels, **head_kwargs)
    if flip_pairs is None:
        flip_pairs = COCO_FLIP_PAIRS if num_keypoints == 17 else ()
    model = TopDownPose(backbone, head, flip_pairs=flip_pairs, input_size=input_size)
    model.backbone_name = backbone_name
    return model

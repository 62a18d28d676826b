"""Backbone + decode head (mmseg's ``EncoderDecoder``): training losses and per-class scores.

Two kinds of decode head are supported:

* *mask* heads (SegViT's ATM heads) output class logits + mask logits; their semantic output is
  already a per-class probability map, and they train with :class:`~vitlab.segmentation.losses.ATMLoss`;
* *pixel* heads (UperNet, Semantic FPN) output (B, K, h, w) logits at a fraction of the input
  size; they train with per-pixel cross-entropy (plus ``auxiliary_weight`` x that of an optional
  ``auxiliary_head`` on one backbone map) and their scores are softmax probabilities.

The backbone gives NCHW maps through ``forward_intermediates(x, indices)``. Inputs whose sides are
not a multiple of the backbone's stride are padded at the bottom/right and the scores cropped back.
Parameter names are ``backbone.*`` / ``decode_head.*`` as in mmseg checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.models.base import VitlabModel
from vitlab.segmentation.losses import ATMLoss, pixel_cross_entropy


def is_mask_head(head: nn.Module) -> bool:
    return hasattr(head, "forward_outputs")


class Segmentor(VitlabModel):
    """``backbone`` (a vitlab model) + ``decode_head`` reading the backbone maps at ``in_indices``.

    In training mode ``forward`` returns the head's raw output (the ATM dict, or pixel logits);
    in eval mode per-class probabilities (B, K, H, W) at the input size. ``loss(img, label)``
    returns the named loss terms and their sum under ``"loss"``.
    """

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, in_indices, num_classes: int,
                 ignore_index: int = 255, criterion: nn.Module | None = None, size_divisor: int = 32,
                 test_cfg: dict | None = None, auxiliary_head: nn.Module | None = None, auxiliary_index: int = -2,
                 auxiliary_weight: float = 0.4):
        super().__init__()
        self.backbone, self.decode_head = backbone, decode_head
        if auxiliary_head is not None:
            self.auxiliary_head = auxiliary_head
        self.auxiliary_index, self.auxiliary_weight = auxiliary_index, auxiliary_weight
        self.in_indices = list(in_indices)
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.criterion = criterion
        self.size_divisor = size_divisor
        self.test_cfg = dict(test_cfg or {"mode": "whole"})
        self.num_features = getattr(backbone, "num_features", 0)
        self.feature_info = [backbone.feature_info[i] for i in self.in_indices] if backbone.feature_info else []
        cfg = dict(getattr(backbone, "pretrained_cfg", {}))
        self.pretrained_cfg = {**cfg, "num_classes": num_classes, "task": "segmentation",
                               "ignore_index": ignore_index}

    # --- API -------------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        nwd = getattr(self.backbone, "no_weight_decay", lambda: set())()
        return {f"backbone.{n}" for n in nwd} | {"decode_head.q.weight", "decode_head.atm.q.weight"}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.backbone.set_grad_checkpointing(enable)

    def reset_classifier(self, num_classes: int) -> None:
        """New class-specific parameters (queries + class head, or the final classifier) for ``num_classes``."""
        self.decode_head.reset_classes(num_classes)
        if hasattr(self, "auxiliary_head"):
            self.auxiliary_head.reset_classes(num_classes)
        self.num_classes = num_classes
        if isinstance(self.criterion, ATMLoss):
            c = self.criterion
            self.criterion = ATMLoss(num_classes, c.dec_layers, c.weight_dict["loss_mask"], c.weight_dict["loss_dice"],
                                     c.weight_dict["loss_ce"], c.loss_weight, eos_coef=c.eos_coef)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def get_classifier(self) -> nn.Module:
        return self.decode_head

    def forward_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The backbone maps the decode head reads (shallow -> deep)."""
        return self.backbone.forward_intermediates(img, self.in_indices)

    def forward_intermediates(self, img: torch.Tensor, indices=None) -> list[torch.Tensor]:
        return self.backbone.forward_intermediates(img, indices)

    def forward_head(self, feats, pre_logits: bool = False, out_size=None):
        """Decode ``feats``; ``out_size`` is the image size the mask heads predict at."""
        if is_mask_head(self.decode_head):
            return self.decode_head(feats, out_size=out_size)
        return self.decode_head(feats)

    def forward(self, img: torch.Tensor):
        if self.training:
            return self.forward_head(self.forward_features(img), out_size=img.shape[-2:])
        return self.predict_scores(img)

    # --- training / inference ----------------------------------------------------------------------
    def loss(self, img: torch.Tensor, label: torch.Tensor) -> dict[str, torch.Tensor]:
        """Loss terms for a batch of images (B, 3, H, W) and labels (B, H, W) with ``ignore_index``."""
        if label.ndim == 4:
            label = label[:, 0]
        if label.shape[-2:] != img.shape[-2:]:
            raise ValueError(f"label size {tuple(label.shape[-2:])} differs from image size {tuple(img.shape[-2:])}")
        feats = self.forward_features(img)
        if is_mask_head(self.decode_head):
            out = self.decode_head.forward_outputs(feats, out_size=img.shape[-2:], with_aux=True, with_pred=False)
            losses = self.criterion(out, label, ignore_index=self.ignore_index)
        else:
            losses = {"loss_ce": pixel_cross_entropy(self.decode_head(feats), label, self.ignore_index)}
        if hasattr(self, "auxiliary_head"):
            aux = self.auxiliary_head(feats[self.auxiliary_index])
            losses["loss_aux"] = self.auxiliary_weight * pixel_cross_entropy(aux, label, self.ignore_index)
        losses["loss"] = sum(losses.values())
        return losses

    def _pad(self, img: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        H, W = img.shape[-2:]
        d = self.size_divisor
        ph, pw = (-H) % d, (-W) % d
        return (F.pad(img, (0, pw, 0, ph)) if ph or pw else img), (H, W)

    @torch.no_grad()
    def predict_scores(self, img: torch.Tensor) -> torch.Tensor:
        """Per-class probabilities (B, K, H, W) for one forward pass over the whole input."""
        padded, (H, W) = self._pad(img)
        feats = self.forward_features(padded)
        if is_mask_head(self.decode_head):
            scores = self.decode_head.forward_outputs(feats, out_size=padded.shape[-2:], with_aux=False)["pred"]
        else:
            logits = self.decode_head(feats)
            scores = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False).softmax(1)
        return scores[..., :H, :W]

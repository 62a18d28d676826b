"""SegViT: semantic segmentation with plain ViTs (Zhang et al., arXiv 2210.05844; official code zbwxp/SegVit).

A plain ViT encoder gives features of several layers; the Attention-to-Mask decoder
(:mod:`vitlab.heads.atm_decoder`) turns class queries into masks. SegViT-Shrunk downsamples the
tokens inside the encoder with queries (``shrink_idx``) and restores resolution with the
query-upsampling head (:mod:`vitlab.heads.tpn`), for ~40% less compute.

The family ``segvit`` takes the ``model`` dict of an official mmseg config (``backbone=dict(...)``,
``decode_head=dict(...)``, ``test_cfg``); released mmseg checkpoints (``state_dict`` with
``backbone.``/``decode_head.`` keys, mmseg ViT layout, the loss's ``empty_weight`` buffer) load directly.
"""
from __future__ import annotations

import copy

import torch

from vitlab.heads.atm_decoder import ATMHead
from vitlab.heads.tpn import TPNATMHead
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD
from vitlab.models.registry import register_family, register_model
from vitlab.models.vit import vit_from_mmseg_kwargs
from vitlab.segmentation.losses import ATMLoss
from vitlab.segmentation.segmentor import Segmentor

HEADS = {"ATMHead": ATMHead, "TPNATMHead": TPNATMHead}


class SegViT(Segmentor):
    """ViT encoder + ATM (or query-upsampling + ATM) decode head, built from an mmseg model config."""

    def __init__(self, backbone: dict, decode_head: dict, test_cfg: dict | None = None, train_cfg=None,
                 pretrained=None, type: str = "EncoderDecoder", init_cfg=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if type != "EncoderDecoder":
            raise ValueError(f"SegViT is an mmseg EncoderDecoder, got type={type!r}")
        head_cfg = dict(decode_head)
        head_type = head_cfg.pop("type", "ATMHead")
        if head_type not in HEADS:
            raise ValueError(f"decode_head type must be one of {sorted(HEADS)}, got {head_type!r}")
        vit, out_indices = vit_from_mmseg_kwargs(**backbone)
        head = HEADS[head_type](**head_cfg)
        loss_cfg = dict(head_cfg.get("loss_decode") or {"num_classes": head.num_classes, "dec_layers": head.num_layers})
        loss_cfg.pop("type", None)
        if loss_cfg.get("num_classes", head.num_classes) != head.num_classes:
            raise ValueError(f"loss_decode.num_classes {loss_cfg['num_classes']} != decode_head num_classes "
                             f"{head.num_classes}")
        super().__init__(vit, head, out_indices, head.num_classes, head_cfg.get("ignore_index", 255),
                         ATMLoss(**loss_cfg), size_divisor=vit.patch_size * (2 if vit.shrink_idx else 1),
                         test_cfg=test_cfg)
        self.pretrained_cfg = {**self.pretrained_cfg, "input_size": (3, head.image_size, head.image_size),
                               "mean": tuple(mean), "std": tuple(std), "crop_pct": 1.0}

    def forward_features(self, img: torch.Tensor) -> list[torch.Tensor]:
        """The ViT maps the decode head reads: a list, one per ``in_indices`` block (shallow -> deep), of
        NCHW patch-token maps (B, C, H / patch_size, W / patch_size) (patch tokens only; the released
        configs have no final norm); blocks from ``shrink_idx`` on give ceil(h / 2) x ceil(w / 2) maps."""
        return super().forward_features(img)

    def checkpoint_filter(self, state_dict: dict, notes: list[str]) -> dict:
        """Drop the ATM loss buffers of mmseg checkpoints and convert the backbone's mmseg ViT layout."""
        buffers = [k for k in state_dict if ".loss_decode." in k or k.startswith("loss_decode.")]
        if buffers:
            notes.append(f"ignored loss buffer(s) {', '.join(buffers)}")
        backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
        rest = {k: v for k, v in state_dict.items() if not k.startswith("backbone.") and k not in buffers}
        if backbone:
            backbone = self.backbone.checkpoint_filter(backbone, notes)
        return {**{f"backbone.{k}": v for k, v in backbone.items()}, **rest}


register_family("segvit", SegViT, doc="SegViT from an mmseg model config (backbone=dict(...), decode_head=dict(...))")

_VIT_B = dict(type="VisionTransformer", img_size=512, patch_size=16, in_channels=3, embed_dims=768, num_layers=12,
              num_heads=12, drop_path_rate=0.1, out_indices=[5, 7, 11], final_norm=False,
              norm_cfg=dict(type="LN", eps=1e-6), with_cls_token=False, interpolate_mode="bicubic")
_VIT_L = {**_VIT_B, "img_size": 640, "embed_dims": 1024, "num_layers": 24, "num_heads": 16, "drop_path_rate": 0.3,
          "out_indices": [7, 15, 23]}
_JAX_NORM = dict(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

SEGVIT_CONFIGS = {
    "vit_base": dict(backbone=_VIT_B, decode_head=dict(
        type="ATMHead", img_size=512, in_channels=768, channels=768, num_classes=150, num_layers=3, num_heads=12,
        use_stages=3, embed_dims=384), test_cfg=dict(mode="slide", crop_size=(512, 512), stride=(341, 341))),
    "vit_large": dict(backbone=_VIT_L, decode_head=dict(
        type="ATMHead", img_size=640, in_channels=1024, channels=1024, num_classes=150, num_layers=3, num_heads=16,
        use_stages=3, embed_dims=512), test_cfg=dict(mode="slide", crop_size=(640, 640), stride=(608, 608)),
        **_JAX_NORM),
    "vit_large_shrunk": dict(backbone={**_VIT_L, "type": "vit_shrink", "shrink_idx": 8, "out_indices": [7, 23]},
                             decode_head=dict(type="TPNATMHead", img_size=640, in_channels=1024, channels=1024,
                                              num_classes=150, num_layers=3, num_heads=16, use_stages=2,
                                              embed_dims=512, shrink_ratio=16),
                             test_cfg=dict(mode="slide", crop_size=(640, 640), stride=(608, 608)), **_JAX_NORM),
    "micro": dict(backbone={**_VIT_B, "img_size": 64, "embed_dims": 64, "num_layers": 4, "num_heads": 2,
                            "drop_path_rate": 0.0, "out_indices": [1, 2, 3]},
                  decode_head=dict(type="ATMHead", img_size=64, in_channels=64, channels=64, num_classes=8,
                                   num_layers=1, num_heads=2, use_stages=3, embed_dims=32),
                  test_cfg=dict(mode="whole")),
}


def _segvit(arch: str, num_classes: int | None = None, img_size: int | None = None, backbone: dict | None = None,
            decode_head: dict | None = None, **kwargs) -> SegViT:
    """Build a variant; ``num_classes``/``img_size`` update backbone, head and loss together."""
    cfg = copy.deepcopy(SEGVIT_CONFIGS[arch])
    cfg["backbone"].update(backbone or {})
    cfg["decode_head"].update(decode_head or {})
    if img_size is not None:
        cfg["backbone"]["img_size"] = cfg["decode_head"]["img_size"] = img_size
        if cfg.get("test_cfg", {}).get("mode") == "slide":
            stride = cfg["test_cfg"]["stride"][0] * img_size // cfg["test_cfg"]["crop_size"][0]
            cfg["test_cfg"] = dict(mode="slide", crop_size=(img_size, img_size), stride=(stride, stride))
    if num_classes is not None:
        cfg["decode_head"]["num_classes"] = num_classes
    head = cfg["decode_head"]
    head["loss_decode"] = dict(type="ATMLoss", num_classes=head["num_classes"],
                               dec_layers=head["num_layers"] if head["type"] == "TPNATMHead" else head["use_stages"],
                               loss_weight=1.0)
    return SegViT(**{**cfg, **kwargs})


@register_model
def segvit_vit_base(**kwargs):
    """SegViT ViT-B/16 @512, ADE20K: 51.3 mIoU (SS), 120.9 GFLOPs (paper)."""
    return _segvit("vit_base", **kwargs)


@register_model
def segvit_vit_large(**kwargs):
    """SegViT ViT-L/16 @640, ADE20K: 54.6 mIoU (SS), 637.9 GFLOPs (paper)."""
    return _segvit("vit_large", **kwargs)


@register_model
def segvit_vit_large_shrunk(**kwargs):
    """SegViT-Shrunk ViT-L/16 @640 (QD at layer 8 + QU head), ADE20K: 53.9 mIoU (SS), 373.5 GFLOPs (paper)."""
    return _segvit("vit_large_shrunk", **kwargs)


@register_model
def segvit_micro(**kwargs):
    """Test-sized SegViT: ViT width 64, depth 4, ATM width 32, 8 classes, 64x64 inputs."""
    return _segvit("micro", **kwargs)

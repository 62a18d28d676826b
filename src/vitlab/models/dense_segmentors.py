"""UperNet and Semantic-FPN segmentors over any vitlab backbone with ``forward_intermediates``.

``create_model("upernet", backbone="volo_d1", num_classes=150)`` or ``"semantic_fpn"`` builds the
backbone without its classifier, reads every map ``feature_info`` lists (fine -> coarse), and
decodes them (UperNet with an auxiliary FCN head on the second-deepest map, as in mmseg's
configs). These are the decoders VOLO, Pale and Swin (UperNet) and UniFormer (Semantic FPN)
report ADE20K results with.

The segmentor's ``forward_features(img)`` is the backbone's ``forward_intermediates``: a list of
NCHW maps (B, C_i, H / r_i, W / r_i), one per ``feature_info`` entry (channels C_i, reduction r_i,
fine -> coarse). ``forward`` gives per-class probabilities (B, K, H, W) in eval mode and the decode
head's pixel logits (B, K, H / r_0, W / r_0) at the finest map's resolution in training mode;
``loss(img, label)`` is the training objective.
"""
from __future__ import annotations

from vitlab.heads.fpn import SemanticFPNHead
from vitlab.heads.uper import FCNAuxHead, UPerHead
from vitlab.models.registry import create_model, register_family, register_model
from vitlab.segmentation.segmentor import Segmentor


def _backbone(name: str, img_size: int | None, kwargs: dict | None):
    extra = dict(kwargs or {})
    if img_size is not None:
        extra["img_size"] = img_size
    model = create_model(name, num_classes=0, **extra)
    if not getattr(model, "feature_info", None):
        raise ValueError(f"backbone {name!r} declares no feature_info; it cannot feed a dense decoder")
    return model


def _test_cfg(model, img_size):
    size = img_size or model.pretrained_cfg.get("input_size", (3, 512, 512))[-1]
    return {"mode": "slide", "crop_size": (size, size), "stride": (size * 2 // 3, size * 2 // 3)}


def upernet(backbone: str = "volo_d1", num_classes: int = 150, img_size: int | None = None, channels: int = 512,
            aux_channels: int = 256, auxiliary: bool = True, backbone_kwargs: dict | None = None,
            ignore_index: int = 255) -> Segmentor:
    """UperNet (+ auxiliary FCN head) on ``backbone``'s multi-scale maps."""
    bb = _backbone(backbone, img_size, backbone_kwargs)
    info = bb.feature_info
    head = UPerHead([i["channels"] for i in info], num_classes, channels)
    aux = FCNAuxHead(info[-2]["channels"], num_classes, aux_channels) if auxiliary and len(info) > 1 else None
    model = Segmentor(bb, head, range(len(info)), num_classes, ignore_index,
                      size_divisor=max(i["reduction"] for i in info), test_cfg=_test_cfg(bb, img_size),
                      auxiliary_head=aux, auxiliary_index=-2)
    model.backbone_name = backbone
    return model


def semantic_fpn(backbone: str = "uniformer_small", num_classes: int = 150, img_size: int | None = None,
                 fpn_channels: int = 256, channels: int = 128, backbone_kwargs: dict | None = None,
                 ignore_index: int = 255) -> Segmentor:
    """Semantic FPN on ``backbone``'s multi-scale maps."""
    bb = _backbone(backbone, img_size, backbone_kwargs)
    info = bb.feature_info
    head = SemanticFPNHead([i["channels"] for i in info], [i["reduction"] for i in info], num_classes,
                           fpn_channels, channels)
    model = Segmentor(bb, head, range(len(info)), num_classes, ignore_index,
                      size_divisor=max(i["reduction"] for i in info), test_cfg=_test_cfg(bb, img_size))
    model.backbone_name = backbone
    return model


register_family("upernet", upernet, doc="UperNet on a vitlab backbone: upernet(backbone='volo_d1', num_classes=150)")
register_family("semantic_fpn", semantic_fpn,
                doc="Semantic FPN on a vitlab backbone: semantic_fpn(backbone='uniformer_small', num_classes=150)")


@register_model(family="upernet")
def upernet_micro(**kwargs):
    """Test-sized UperNet (width 32) on volo_micro, 8 classes."""
    return upernet(**{"backbone": "volo_micro", "num_classes": 8, "channels": 32, "aux_channels": 16, **kwargs})


@register_model(family="semantic_fpn")
def semantic_fpn_micro(**kwargs):
    """Test-sized Semantic FPN (widths 32/16) on uniformer_micro, 8 classes."""
    return semantic_fpn(**{"backbone": "uniformer_micro", "num_classes": 8, "fpn_channels": 32, "channels": 16,
                           **kwargs})

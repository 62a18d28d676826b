"""state_dict layout of the full-size detectors against mmdetection 2.x's module definitions.

The expected lists are written out from mmdet's modules (mmdet/models/necks/fpn.py, dense_heads/rpn_head.py,
roi_heads/bbox_heads/convfc_bbox_head.py, roi_heads/mask_heads/fcn_mask_head.py, roi_heads/cascade_roi_head.py)
with UniFormer's configs (configs/_base_/models/mask_rcnn_uniformer_fpn.py, cascade_mask_rcnn_uniformer_fpn.py,
exp/cascade_mask_rcnn_3x_ms_hybrid_small/config.py):

* ``TwoStageDetector`` registers ``backbone``, ``neck``, ``rpn_head``, ``roi_head`` in that order;
* ``FPN(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=5)``: ``lateral_convs.i`` = ConvModule 1x1
  (``conv`` with bias: no norm), then ``fpn_convs.i`` = ConvModule 3x3; P6 is a max-pool (no parameters);
* ``RPNHead``: ``rpn_conv`` 3x3 256->256, ``rpn_cls`` 1x1 -> 3 anchors x 1 (sigmoid), ``rpn_reg`` 1x1 -> 3 x 4;
* ``Shared2FCBBoxHead``: ``shared_fcs.0`` 256*7*7 -> 1024, ``shared_fcs.1`` 1024 -> 1024, ``fc_cls`` -> 80 + 1,
  ``fc_reg`` -> 4 * 80 (class-specific) or 4 (``reg_class_agnostic``, the cascade 1x heads);
* ``ConvFCBBoxHead(num_shared_convs=4, num_shared_fcs=1, norm_cfg=SyncBN)``: ``shared_convs.i.conv`` (no bias) +
  ``shared_convs.i.bn`` (weight, bias, running_mean, running_var, num_batches_tracked), then ``shared_fcs.0``;
* ``FCNMaskHead``: ``convs.0..3.conv`` 3x3 with bias, ``upsample`` ConvTranspose2d (weight (in, out, 2, 2)),
  ``conv_logits`` 1x1 -> 80; the RoI extractors have no parameters;
* ``CascadeRoIHead``: ``bbox_head`` and ``mask_head`` are ModuleLists of ``num_stages`` = 3 heads (a single
  ``mask_head`` dict is repeated per stage).

The backbone keys are those of vitlab's dense UniFormer, prefixed ``backbone.``; the last test derives them from
the official classification manifest: the official detection backbone (object_detection/mmdet/models/backbones/
uniformer.py) is the classifier without ``norm`` (BatchNorm) and ``head``, with LayerNorms ``norm1..norm4`` on the
four stage outputs (and no parameters in ``pre_logits``, an Identity).
"""
import json

from conftest import manifest_path

from vitlab.models.registry import build_without_weights

IN_CHANNELS = [64, 128, 320, 512]


def conv(prefix, cout, cin, k, bias=True):
    return [(f"{prefix}.weight", (cout, cin, k, k))] + ([(f"{prefix}.bias", (cout,))] if bias else [])


def linear(prefix, cout, cin):
    return [(f"{prefix}.weight", (cout, cin)), (f"{prefix}.bias", (cout,))]


def bn(prefix, c):
    return [(f"{prefix}.weight", (c,)), (f"{prefix}.bias", (c,)), (f"{prefix}.running_mean", (c,)),
            (f"{prefix}.running_var", (c,)), (f"{prefix}.num_batches_tracked", ())]


def backbone_keys(arch="uniformer_small"):
    model = build_without_weights(arch, dense=True, hybrid=True, window_size=14)
    return [(f"backbone.{k}", tuple(v.shape)) for k, v in model.state_dict().items()]


def neck_and_rpn_keys():
    keys = []
    for i, c in enumerate(IN_CHANNELS):
        keys += conv(f"neck.lateral_convs.{i}.conv", 256, c, 1)
    for i in range(4):
        keys += conv(f"neck.fpn_convs.{i}.conv", 256, 256, 3)
    keys += conv("rpn_head.rpn_conv", 256, 256, 3) + conv("rpn_head.rpn_cls", 3, 256, 1)
    keys += conv("rpn_head.rpn_reg", 12, 256, 1)
    return keys


def shared2fc(prefix, agnostic=False):
    return (linear(f"{prefix}.shared_fcs.0", 1024, 256 * 7 * 7) + linear(f"{prefix}.shared_fcs.1", 1024, 1024)
            + linear(f"{prefix}.fc_cls", 81, 1024) + linear(f"{prefix}.fc_reg", 4 if agnostic else 320, 1024))


def convfc_4conv1fc(prefix):
    keys = []
    for i in range(4):
        keys += conv(f"{prefix}.shared_convs.{i}.conv", 256, 256, 3, bias=False) + bn(f"{prefix}.shared_convs.{i}.bn",
                                                                                      256)
    return keys + linear(f"{prefix}.shared_fcs.0", 1024, 256 * 7 * 7) + linear(f"{prefix}.fc_cls", 81, 1024) + \
        linear(f"{prefix}.fc_reg", 320, 1024)


def fcn_mask_head(prefix):
    keys = []
    for i in range(4):
        keys += conv(f"{prefix}.convs.{i}.conv", 256, 256, 3)
    return keys + [(f"{prefix}.upsample.weight", (256, 256, 2, 2)), (f"{prefix}.upsample.bias", (256,))] + \
        conv(f"{prefix}.conv_logits", 80, 256, 1)


def layout(name, **kwargs):
    return [(k, tuple(v.shape)) for k, v in build_without_weights(name, **kwargs).state_dict().items()]


def test_mask_rcnn_uniformer_small_h14_matches_mmdet():
    expected = backbone_keys() + neck_and_rpn_keys() + shared2fc("roi_head.bbox_head") + \
        fcn_mask_head("roi_head.mask_head")
    got = layout("mask_rcnn_uniformer_small_h14")
    assert got == expected, sorted(set(got) ^ set(expected))[:20]
    assert len(expected) == len(backbone_keys()) + 16 + 6 + 8 + 12
    # the backbone is the dense one: per-stage norms, no classifier
    names = [k for k, _ in got]
    assert "backbone.norm4.weight" in names and not any(k.startswith("backbone.head.") for k in names)


def test_mask_rcnn_uniformer_base_h14_matches_mmdet():
    expected = backbone_keys("uniformer_base") + neck_and_rpn_keys() + shared2fc("roi_head.bbox_head") + \
        fcn_mask_head("roi_head.mask_head")
    assert layout("mask_rcnn_uniformer_base_h14") == expected


def test_cascade_3x_layout_has_three_box_and_three_mask_heads():
    expected = backbone_keys() + neck_and_rpn_keys()
    for i in range(3):
        expected += convfc_4conv1fc(f"roi_head.bbox_head.{i}")
    for i in range(3):
        expected += fcn_mask_head(f"roi_head.mask_head.{i}")
    got = layout("cascade_mask_rcnn_uniformer_small_h14")
    assert got == expected, sorted(set(got) ^ set(expected))[:20]


def test_cascade_1x_family_defaults_are_class_agnostic_shared2fc():
    expected = backbone_keys() + neck_and_rpn_keys()
    for i in range(3):
        expected += shared2fc(f"roi_head.bbox_head.{i}", agnostic=True)
    for i in range(3):
        expected += fcn_mask_head(f"roi_head.mask_head.{i}")
    got = layout("cascade_mask_rcnn", backbone="uniformer_small", backbone_kwargs=dict(hybrid=True, window_size=14))
    assert got == expected


def test_full_size_parameter_counts():
    """The UniFormer paper's Mask R-CNN / Cascade tables: 41M / 69M (1x) and 79M / 107M (3x cascade)."""
    counts = {n: sum(v.numel() for v in build_without_weights(n).parameters()) / 1e6
              for n in ("mask_rcnn_uniformer_small_h14", "mask_rcnn_uniformer_base_h14",
                        "cascade_mask_rcnn_uniformer_small_h14", "cascade_mask_rcnn_uniformer_base_h14")}
    assert [round(c) for c in counts.values()] == [41, 69, 79, 107], counts


def test_backbone_keys_follow_the_official_detection_backbone(require_fixtures):
    for arch in ("uniformer_small", "uniformer_base"):
        classifier = json.loads(manifest_path(arch).read_text())["state_dict"]
        expected = {k: tuple(v) for k, v in classifier.items() if k.split(".")[0] not in ("norm", "head")}
        for i, c in enumerate(IN_CHANNELS):
            expected.update({f"norm{i + 1}.weight": (c,), f"norm{i + 1}.bias": (c,)})
        got = {k[len("backbone."):]: v for k, v in backbone_keys(arch)}
        assert got == expected, sorted(set(got) ^ set(expected))[:10]

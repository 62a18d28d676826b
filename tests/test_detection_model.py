"""The micro Mask R-CNN end to end: losses + backward, predictions in original pixels, checkpoints, overfitting;
the cascade and the other backbone kinds (simple pyramid, 3-stage Swin) on small configurations."""
import pytest
import torch

import vitlab
from vitlab.ops import box_iou

S = 128


def synthetic_batch(specs, size=S):
    """Images with flat coloured rectangles on a dark background, and their targets."""
    colours = [torch.tensor([1.5, -0.5, 0.5]), torch.tensor([-0.5, 1.5, 1.0])]
    images, targets = [], []
    for boxes, labels in specs:
        img = torch.full((3, size, size), -1.0)
        masks = torch.zeros(len(boxes), size, size, dtype=torch.uint8)
        for i, ((x1, y1, x2, y2), lab) in enumerate(zip(boxes, labels)):
            img[:, y1:y2, x1:x2] = colours[lab][:, None, None]
            masks[i, y1:y2, x1:x2] = 1
        images.append(img)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "masks": masks, "crowd": torch.zeros(len(boxes), dtype=torch.bool)})
    metas = [{"img_size": (size, size), "orig_size": (size, size), "scale_factor": (1.0, 1.0),
              "pad_shape": (size, size)} for _ in specs]
    return torch.stack(images), targets, metas


SPECS = [([[10, 20, 60, 70], [80, 30, 120, 110]], [0, 1]), ([[30, 40, 100, 90]], [1]), ([[5, 5, 40, 50]], [0])]


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    return vitlab.create_model("mask_rcnn_micro", num_classes=2)


def test_micro_configuration(micro):
    assert micro.backbone.dense and micro.neck.out_channels == 64 and micro.rpn_head.feat_channels == 64
    assert micro.roi_head.bbox_head.fc_cls.out_features == 3 and micro.roi_head.mask_head.conv_logits.out_channels == 2
    assert micro.rpn_head.prior_generator.base_anchors[0][1].tolist() == [-8.0, -8.0, 8.0, 8.0]   # 16 px at stride 4
    assert micro.pretrained_cfg["input_size"] == (3, 192, 192)
    assert micro.pretrained_cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    full = vitlab.models.get_entry("mask_rcnn_uniformer_small_h14")
    assert "41.2M params" in full.doc and "268.8 GMACs" in full.doc


def test_loss_and_backward_reach_every_parameter(micro):
    images, targets, metas = synthetic_batch(SPECS[:2])
    targets[1]["crowd"] = torch.tensor([False])
    micro.train()
    micro.zero_grad()
    losses = micro.loss(images, targets, metas)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask", "loss"}
    assert all(torch.isfinite(v) for v in losses.values())
    torch.testing.assert_close(losses["loss"], sum(v for k, v in losses.items() if k != "loss"))
    losses["loss"].backward()
    missing = [n for n, p in micro.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum())]
    assert not missing, f"no gradient for {missing}"
    assert all(torch.isfinite(p.grad).all() for p in micro.parameters())
    with pytest.raises(ValueError, match="masks"):
        micro.loss(images, [{k: v for k, v in t.items() if k != "masks"} for t in targets], metas)
    # an image without objects still trains (everything negative)
    empty = [dict(targets[0]), {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                                "masks": torch.zeros(0, S, S, dtype=torch.uint8)}]
    assert torch.isfinite(micro.loss(images, empty, metas)["loss"])


def test_predict_shapes_and_rescaling(micro):
    images, _, metas = synthetic_batch(SPECS[:2])
    # the images were resized by (w 0.5, h 0.25) from 256 x 512 originals
    orig = [dict(m, orig_size=(512, 256), scale_factor=(0.5, 0.25)) for m in metas]
    micro.eval()
    out = micro.predict(images, orig)
    raw = micro.predict(images, orig, rescale=False)
    assert len(out) == 2
    for o, r in zip(out, raw):
        n = o["boxes"].shape[0]
        assert 0 < n <= 100 and o["scores"].shape == (n,) and o["labels"].shape == (n,)
        assert o["masks"].shape == (n, 512, 256) and o["masks"].dtype == torch.bool
        assert r["masks"].shape == (n, S, S)
        assert (o["scores"] > 0.05).all() and (o["scores"][1:] <= o["scores"][:-1]).all()
        assert o["labels"].min() >= 0 and o["labels"].max() < 2
        torch.testing.assert_close(o["boxes"], r["boxes"] / torch.tensor([0.5, 0.25, 0.5, 0.25]))
        assert (o["boxes"][:, 2] <= 256 + 1e-3).all() and (o["boxes"][:, 3] <= 512 + 1e-3).all()
    assert len(micro(images)) == 5 * 2 + 3   # forward without metas: the FLOPs path (RPN maps + RoI outputs)
    assert micro(images, metas)[0]["boxes"].shape[1] == 4


def test_checkpoint_round_trip(micro, tmp_path):
    torch.manual_seed(1)
    other = vitlab.create_model("mask_rcnn_micro", num_classes=2).eval()
    micro.eval()
    images, _, _ = synthetic_batch(SPECS[:1])
    assert not torch.equal(micro(images)[-1], other(images)[-1])
    torch.save({"state_dict": micro.state_dict()}, tmp_path / "det.pth")
    report = vitlab.load_checkpoint(other, str(tmp_path / "det.pth"), strict=True)
    assert report.ok
    for a, b in zip(micro(images), other(images)):
        assert torch.equal(a, b)
    micro.save_pretrained(tmp_path / "model")
    loaded = vitlab.from_pretrained(tmp_path / "model")
    assert type(loaded) is type(micro) and torch.equal(loaded.eval()(images)[-1], micro(images)[-1])


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    model = vitlab.create_model("mask_rcnn_micro", num_classes=2)
    images, targets, metas = synthetic_batch(SPECS)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    history = []
    for _ in range(40):
        loss = model.loss(images, targets, metas)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
    assert history[0] / (sum(history[-3:]) / 3) > 8, history
    model.eval()
    for pred, target in zip(model.predict(images, metas), targets):
        confident = pred["scores"] > 0.5
        ious = box_iou(target["boxes"], pred["boxes"][confident])
        assert ious.shape[1] > 0
        best = ious.max(1)
        assert (best.values > 0.5).all(), best.values
        assert torch.equal(pred["labels"][confident][best.indices], target["labels"])
        mask = pred["masks"][confident][best.indices]
        inter = (mask & target["masks"].bool()).flatten(1).sum(1)
        union = (mask | target["masks"].bool()).flatten(1).sum(1)
        assert (inter / union > 0.5).all()


MICRO_HEADS = dict(
    neck=dict(out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32, anchor_generator=dict(scales=[4])),
    train_cfg=dict(rpn_proposal=dict(nms_pre=500, max_per_img=200)))


def _small_roi_head(num_stages=None):
    box = dict(in_channels=32, fc_out_channels=64)
    head = dict(bbox_roi_extractor=dict(out_channels=32), mask_roi_extractor=dict(out_channels=32),
                mask_head=dict(in_channels=32, conv_out_channels=32, num_convs=2))
    if num_stages:
        from vitlab.detection.cascade import CASCADE_BBOX_HEADS
        from vitlab.detection.mask_rcnn import merge_cfg
        head["bbox_head"] = [merge_cfg(h, box) for h in CASCADE_BBOX_HEADS]
    else:
        head["bbox_head"] = box
    return head


def test_cascade_losses_refinement_and_predict():
    torch.manual_seed(0)
    model = vitlab.create_model("cascade_mask_rcnn", backbone="uniformer_micro", num_classes=2,
                                roi_head=_small_roi_head(3), **MICRO_HEADS)
    assert len(model.roi_head.bbox_head) == 3 and len(model.roi_head.mask_head) == 3
    assert [h.bbox_coder.stds for h in model.roi_head.bbox_head] == [(0.1, 0.1, 0.2, 0.2), (0.05, 0.05, 0.1, 0.1),
                                                                      (0.033, 0.033, 0.067, 0.067)]
    assert [a.pos_iou_thr for a in model.roi_head.bbox_assigner] == [0.5, 0.6, 0.7]
    assert model.rpn_head.loss_bbox.type == "SmoothL1Loss" and model.rpn_head.loss_bbox.beta == pytest.approx(1 / 9)
    images, targets, metas = synthetic_batch(SPECS[:2])
    model.train()
    losses = model.loss(images, targets, metas)
    stage = {f"s{i}.{k}" for i in range(3) for k in ("loss_cls", "loss_bbox", "loss_mask")}
    assert set(losses) == stage | {"loss_rpn_cls", "loss_rpn_bbox", "loss"}
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing
    assert model.roi_head.stage_loss_weights == [1, 0.5, 0.25]
    model.eval()
    out = model.predict(images, metas)
    assert out[0]["masks"].shape[1:] == (S, S) and out[0]["boxes"].shape[1] == 4
    assert len(model(images)) == 5 * 2 + 3 * 2 + 3


@pytest.mark.parametrize("backbone, kind", [("vit_micro", "pyramid"), ("volo_micro", "pyramid"),
                                            ("swin_micro", "fpn"), ("pale_micro", "fpn")])
def test_other_backbones(backbone, kind):
    torch.manual_seed(0)
    model = vitlab.create_model("mask_rcnn", backbone=backbone, num_classes=2, roi_head=_small_roi_head(),
                                **MICRO_HEADS)
    assert hasattr(model, "pyramid") == (kind == "pyramid")
    if kind == "pyramid":
        assert model.pyramid.strides == [4, 8, 16, 32] and model.neck.top_down is False
    images, targets, metas = synthetic_batch(SPECS[:2])
    model.train()
    losses = model.loss(images, targets, metas)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    neck_and_heads = [n for n, p in model.named_parameters() if not n.startswith("backbone.") and p.grad is None]
    assert not neck_and_heads
    model.eval()
    assert model.predict(images, metas)[0]["boxes"].shape[1] == 4


def test_backbone_feature_strides_must_match_the_anchors():
    with pytest.raises(ValueError, match="anchor generator"):
        vitlab.create_model("mask_rcnn", backbone="uniformer_micro", num_classes=2,
                            rpn_head=dict(anchor_generator=dict(strides=[8, 16, 32, 64, 128])))


def test_crowd_instances_become_ignored_regions():
    from vitlab.detection.mask_rcnn import normalise_metas, split_targets
    masks = torch.zeros(3, 8, 8, dtype=torch.uint8)
    masks[1] = 1
    t = {"boxes": torch.tensor([[0.0, 0, 4, 4], [1, 1, 8, 8], [2, 2, 3, 3]]), "labels": torch.tensor([0, 1, 0]),
         "masks": masks, "crowd": torch.tensor([False, True, False])}
    boxes, labels, ignore, gt_masks = split_targets([t], "cpu", with_masks=True)
    assert boxes[0].tolist() == [[0, 0, 4, 4], [2, 2, 3, 3]] and labels[0].tolist() == [0, 0]
    assert ignore[0].tolist() == [[1, 1, 8, 8]] and gt_masks[0].shape == (2, 8, 8) and gt_masks[0].sum() == 0
    meta = normalise_metas([{"img_size": (6, 8), "orig_size": (12, 32), "scale_factor": (0.25, 0.5)}],
                           torch.zeros(1, 3, 32, 32))[0]
    assert meta["img_shape"] == (6, 8) and meta["pad_shape"] == (32, 32) and meta["ori_shape"] == (12, 32)
    assert meta["scale_factor"] == (0.25, 0.5, 0.25, 0.5)
    with pytest.raises(ValueError, match="larger than the batch"):
        normalise_metas([{"img_size": (64, 8)}], torch.zeros(1, 3, 32, 32))

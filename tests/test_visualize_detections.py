"""Drawing detections: boxes, masks, keypoints, a legend and a caption; PNGs with a header band, side by side with
the ground truth, small images enlarged."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.detection.visualize import COCO_SKELETON, class_colors, draw_detections, render_detections

H, W = 120, 160


def _scene():
    img = np.full((H, W, 3), 90, np.uint8)
    boxes = torch.tensor([[20.0, 30.0, 70.0, 100.0], [90.0, 40.0, 150.0, 110.0], [5.0, 5.0, 15.0, 15.0]])
    masks = torch.zeros(3, H, W, dtype=torch.bool)
    masks[0, 40:90, 30:60] = True
    masks[1, 50:100, 100:140] = True
    kps = torch.zeros(3, 17, 3)
    kps[0, :, 0] = torch.linspace(25, 65, 17)
    kps[0, :, 1] = torch.linspace(35, 95, 17)
    kps[0, :, 2] = 0.9
    kps[0, 16, 2] = 0.1  # below kpt_thr: not drawn
    return img, dict(boxes=boxes, labels=torch.tensor([0, 1, 1]), scores=torch.tensor([0.95, 0.6, 0.1]), masks=masks,
                     keypoints=kps)


def test_render_keeps_the_size_and_draws_every_part():
    img, pred = _scene()
    out = render_detections(img, **pred, class_names=["person", "car"], title="")
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    colors = class_colors(2)
    # the second box's outline has the class colour; the mask interior is blended towards it
    assert np.abs(out[75, 90].astype(int) - colors[1]).max() < 40
    inside = out[95, 130].astype(int)
    assert np.abs(inside - (0.55 * 90 + 0.45 * colors[1].astype(float))).max() < 3
    # the low-scoring third box is not drawn
    assert (out[10, 10] == 90).all()
    # keypoints: a dot where a joint is, nothing at the dropped joint's place
    only_kps = render_detections(img, keypoints=pred["keypoints"][:1])
    assert only_kps[65, 45].tolist() == [255, 140, 0]  # joint 8 (right elbow) at (45, 65): a right-side dot
    assert only_kps[35, 25].tolist() == [60, 220, 60]  # the nose
    limb = torch.zeros(1, 17, 3)
    limb[0, 5], limb[0, 7] = torch.tensor([20.0, 20.0, 1.0]), torch.tensor([60.0, 20.0, 1.0])  # left shoulder, elbow
    drawn = render_detections(img, keypoints=limb)
    assert np.abs(drawn[20, 40].astype(int) - [0, 200, 255]).max() < 40  # the skeleton line between them
    assert (render_detections(img, keypoints=limb, skeleton=())[20, 40] == 90).all()
    dropped = render_detections(img, keypoints=pred["keypoints"][:1, 16:], skeleton=())
    assert (dropped == 90).all()  # joint 16's score 0.1 is below kpt_thr
    # the legend (top-right) and a caption (top-left) change the corners
    assert not (out[3, W - 3] == 90).all()
    titled = render_detections(img, **pred, class_names=["person", "car"], title="step 10")
    assert not np.array_equal(titled[:12, :40], out[:12, :40])


def test_draw_detections_writes_a_png_atomically(tmp_path):
    img, pred = _scene()
    chw = torch.from_numpy(img).permute(2, 0, 1).float() / 255  # a float CHW image is accepted too
    path = draw_detections(tmp_path / "sub" / "det.png", chw, pred, class_names=["person", "car"],
                           title="mask_rcnn_micro: 000001.png", min_side=0)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    expected = render_detections(img, **pred, class_names=["person", "car"], title="mask_rcnn_micro: 000001.png",
                                 header=True)
    with Image.open(path) as im:
        assert im.mode == "RGB" and np.array_equal(np.asarray(im), expected)
    band = expected.shape[0] - H
    assert 10 < band < 120 and expected.shape[1] == W                     # title + legend above the image
    assert np.array_equal(expected[band:][10, 10], [90, 90, 90])          # the image's corner is not covered
    assert (expected[:band] == 255).mean() > 0.5                          # a white band with dark text
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["det.png"]  # no temporary file left


def test_small_images_are_enlarged_and_compared_with_the_truth(tmp_path):
    img, pred = _scene()
    truth = {"boxes": pred["boxes"][:2], "labels": pred["labels"][:2], "masks": pred["masks"][:2]}
    path = draw_detections(tmp_path / "cmp.png", img, pred, truth=truth, class_names=["person", "car"],
                           title="val 000001.png")
    with Image.open(path) as im:
        picture = np.asarray(im)
    f = 4                                                      # 480 / 120: labels stay legible
    band = picture.shape[0] - H * f
    assert picture.shape[1] == 2 * W * f + 8 and 10 < band < 100
    colors = class_colors(2)
    left, right = picture[band:, :W * f], picture[band:, W * f + 8:]
    # the second instance's mask interior in both panels (enlarged coordinates), blended towards its colour
    for panel in (left, right):
        assert np.abs(panel[95 * f, 130 * f].astype(int) - (0.55 * 90 + 0.45 * colors[1])).max() < 3
    # the third box (score 0.1) is in neither: not in the truth, and below the prediction threshold
    assert (left[10 * f, 10 * f] == 90).all() and (right[10 * f, 10 * f] == 90).all()
    assert (picture[band:, W * f:W * f + 8] == 255).all()      # a white gap between the panels


def test_inputs_are_checked():
    img, pred = _scene()
    with pytest.raises(ValueError, match="labels has 2 entries for 3 instances"):
        render_detections(img, boxes=pred["boxes"], labels=pred["labels"][:2])
    with pytest.raises(ValueError, match="masks are"):
        render_detections(img, boxes=pred["boxes"], masks=torch.zeros(3, 10, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="image must be"):
        render_detections(np.zeros((4, 5)).reshape(1, 4, 5, 1))
    assert len(COCO_SKELETON) == 19 and max(max(p) for p in COCO_SKELETON) == 16
    assert render_detections(img).shape == (H, W, 3)  # nothing to draw: the image itself

"""The top-down COCO keypoint dataset: instance selection, crops, targets, seeded augmentation, collate."""
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from vitlab.data.folder import Skipped
from vitlab.pose.data import TopDownCocoKeypoints, collate_topdown, warp_affine
from vitlab.pose.decode import keypoints_from_heatmaps
from vitlab.pose.targets import affine_matrix, apply_affine, box_to_center_scale, fliplr_joints, gaussian_targets

from test_pose_utils import JOINT_COLORS, write_people

META_KEYS = {"image_id", "ann_id", "file_name", "orig_size", "bbox", "bbox_score", "center", "scale", "rotation",
             "flip", "index"}


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    return write_people(tmp_path_factory.mktemp("people"), num_images=3, seed=1)


def _annotation(ds, meta):
    ann = ds.coco.anns[meta["ann_id"]]
    kp = np.asarray(ann["keypoints"], dtype=np.float64).reshape(-1, 3)
    return kp[:, :2], np.minimum(kp[:, 2], 1)


def test_instances_skip_crowds_and_people_without_keypoints(people):
    ds = TopDownCocoKeypoints(*people, train=False)
    assert len(ds) == 6  # 3 images x 2 people; the crowd and the keypoint-less person are skipped
    assert all(ds.coco.anns[s["ann_id"]]["num_keypoints"] > 0 for s in ds.samples)
    assert ds.category_id == 1 and ds.num_keypoints == 17


def test_val_item_layout_center_scale_and_targets(people):
    ds = TopDownCocoKeypoints(*people, train=False)
    image, (target, weight), meta = ds[1]
    assert image.shape == (3, 256, 192) and image.dtype == torch.float32
    assert target.shape == (17, 64, 48) and weight.shape == (17, 1)
    assert set(meta) == META_KEYS and meta["flip"] is False and meta["rotation"] == 0.0
    assert json.loads(json.dumps(meta)) is not None  # plain Python values
    ann = ds.coco.anns[meta["ann_id"]]
    x, y, w, h = ann["bbox"]
    center, scale = box_to_center_scale([x, y, w - 1, h - 1])  # mmpose's box sanitising: inclusive pixel ends
    assert meta["center"] == pytest.approx(center.tolist()) and meta["scale"] == pytest.approx(scale.tolist())
    joints, vis = _annotation(ds, meta)
    assert weight[:, 0].tolist() == vis.tolist() and vis[3] == 0  # the second person's joint 3 is unlabelled
    # the targets decode back onto the annotated joints (MSRA quantisation: half a heatmap pixel per axis)
    xy, _ = keypoints_from_heatmaps(target[None], torch.tensor([meta["center"]]), torch.tensor([meta["scale"]]))
    ppx = meta["scale"][0] * 200 / 48
    err = np.abs(xy[0].double().numpy() - joints)[vis > 0]
    assert err.max() <= 0.5 * ppx + 1e-6
    # and the crop shows each joint's colour where the matrix puts it (body joints: the face dots overlap)
    crop = ds.denormalize(image).astype(int)
    M = affine_matrix(meta["center"], meta["scale"], 0.0, (192, 256))
    for j in range(5, 17):
        cx, cy = apply_affine([joints[j]], M)[0].round().astype(int)
        assert np.abs(crop[cy, cx] - JOINT_COLORS[j].astype(int)).max() < 60, j


def test_train_samples_are_seeded_and_consistent_with_their_meta(people):
    ds = TopDownCocoKeypoints(*people, train=True)
    a, b = ds[(2, 123)], ds[(2, 123)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1][0], b[1][0]) and a[2] == b[2]
    metas = [ds[(i % len(ds), seed)][2] for seed, i in enumerate(range(40))]
    assert any(m["flip"] for m in metas) and not all(m["flip"] for m in metas)
    assert any(m["rotation"] != 0 for m in metas) and any(m["rotation"] == 0 for m in metas)
    assert all(-80 <= m["rotation"] <= 80 for m in metas)
    for seed in range(12):  # every target equals the one recomputed from the meta (flip, center, scale, rotation)
        image, (target, weight), meta = ds[(seed % len(ds), seed)]
        joints, vis = _annotation(ds, meta)
        if meta["flip"]:
            joints, vis = fliplr_joints(joints, vis, ds.coco.imgs[meta["image_id"]]["width"])
        M = affine_matrix(meta["center"], meta["scale"], meta["rotation"], (192, 256))
        expected, expected_w = gaussian_targets(np.where(vis[:, None] > 0, apply_affine(joints, M), joints), vis)
        assert torch.equal(target, expected) and torch.equal(weight, expected_w)


def test_flip_swaps_left_and_right_joints(people):
    ds = TopDownCocoKeypoints(*people, train=True, half_body_prob=0.0, rot_prob=0.0, scale_factor=0.0,
                              center_shift_prob=0.0)
    idx = next(i for i, s in enumerate(ds.samples) if s["joints"][3, 2] == 0)  # left ear unlabelled
    seen = set()
    for seed in range(10):
        _, (_, weight), meta = ds[(idx, seed)]
        seen.add(meta["flip"])
        # flipped: the unlabelled left ear becomes the right ear (4)
        assert weight[4 if meta["flip"] else 3].item() == 0 and weight[3 if meta["flip"] else 4].item() == 1
        if meta["flip"]:
            width = ds.coco.imgs[meta["image_id"]]["width"]
            plain = box_to_center_scale([*ds.samples[idx]["bbox"]])[0]
            assert meta["center"][0] == pytest.approx(width - 1 - plain[0])
    assert seen == {True, False}


def test_detected_boxes_for_evaluation(people, tmp_path):
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10.0, 12.0, 40.0, 80.0], "score": 0.9},
            {"image_id": 2, "category_id": 1, "bbox": [50.0, 20.0, 30.0, 60.0], "score": 0.1},
            {"image_id": 2, "category_id": 2, "bbox": [50.0, 20.0, 30.0, 60.0], "score": 0.8}]
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(dets))
    ds = TopDownCocoKeypoints(*people, train=False, bbox_file=path, det_bbox_thr=0.2)
    assert len(ds) == 1
    image, (target, weight), meta = ds[0]
    assert meta["ann_id"] == -1 and meta["bbox_score"] == 0.9 and meta["bbox"] == [10.0, 12.0, 40.0, 80.0]
    assert float(weight.sum()) == 0.0 and float(target.abs().sum()) == 0.0
    assert len(TopDownCocoKeypoints(*people, train=False, bbox_file=path)) == 2
    with pytest.raises(ValueError, match="ground-truth boxes"):
        TopDownCocoKeypoints(*people, train=True, bbox_file=path)


def test_unreadable_image_is_skipped_and_collate_structure(people, tmp_path):
    json_path, img_dir = people
    broken = tmp_path / "imgs"
    broken.mkdir()
    for p in img_dir.iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "000002.png").write_bytes(b"not a png")
    ds = TopDownCocoKeypoints(json_path, broken, train=False)
    items = [ds[i] for i in range(len(ds))]
    assert sum(isinstance(it, Skipped) for it in items) == 2 and "000002.png" in str(items[2])
    (images, metas), (targets, weights), skipped = collate_topdown(items)
    assert images.shape == (4, 3, 256, 192) and targets.shape == (4, 17, 64, 48) and weights.shape == (4, 17, 1)
    assert [m["image_id"] for m in metas] == [1, 1, 3, 3] and len(skipped) == 2
    assert collate_topdown([items[2]]) == (None, None, [str(items[2])])
    loader = DataLoader(TopDownCocoKeypoints(*people, train=False), batch_size=3, collate_fn=collate_topdown)
    (images, metas), (targets, weights), skipped = next(iter(loader))
    assert images.shape[0] == 3 and len(metas) == 3 and skipped == []


def test_smaller_inputs_and_warp_matches_matrix(people):
    ds = TopDownCocoKeypoints(*people, input_size=(96, 128), heatmap_size=(24, 32), train=False)
    image, (target, weight), _ = ds[0]
    assert image.shape == (3, 128, 96) and target.shape == (17, 32, 24)
    img = torch.zeros(3, 10, 10)
    img[:, 4, 6] = 255
    assert warp_affine(img, np.array([[1.0, 0, 2], [0, 1.0, 1]]), (12, 12))[0, 5, 8] == 255  # a pure shift

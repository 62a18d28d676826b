"""The built-in synthetic COCO sets: valid json, exact masks, boxes, area bins, keypoint visibility, caching."""
import contextlib
import io
import json

import numpy as np
import pytest
import torch

pytest.importorskip("pycocotools")
pytest.importorskip("skimage")
from pycocotools.coco import COCO  # noqa: E402

from vitlab.data import synthetic_coco as sc  # noqa: E402
from vitlab.data.coco import CocoDetection  # noqa: E402
from vitlab.data.det_transforms import RandomFlip, build_detection_transform  # noqa: E402
from vitlab.errors import DataError  # noqa: E402

# pycocotools' mask decoding warns about numpy 2's copy keyword
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _coco(path) -> COCO:
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


@pytest.fixture(scope="module")
def inst_root(tmp_path_factory):
    return sc.write_synthetic_instances(tmp_path_factory.mktemp("syn") / "inst", num_train=12, num_val=60, seed=3)


@pytest.fixture(scope="module")
def kp_root(tmp_path_factory):
    return sc.write_synthetic_keypoints(tmp_path_factory.mktemp("syn") / "kp", num_train=40, num_val=8, seed=3)


def _extent(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _disc(shape, h, w):
    """Independent rasterisation of a disc: pixel centres within the radius."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    return (xs - shape["cx"]) ** 2 + (ys - shape["cy"]) ** 2 <= shape["r"] ** 2


def test_instances_json_masks_boxes(inst_root):
    assert sorted(p.name for p in (inst_root / "annotations").iterdir()) == ["instances_train.json",
                                                                            "instances_val.json"]
    for split in ("train", "val"):
        coco = _coco(inst_root / "annotations" / f"instances_{split}.json")
        assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(sc.CATEGORIES)
        discs = dropped = 0
        for img_id, info in coco.imgs.items():
            h, w = info["height"], info["width"]
            assert (inst_root / "images" / split / info["file_name"]).is_file()
            assert max(h, w) == 192 and 144 <= min(h, w) <= 192
            anns = {a["id"]: a for a in coco.imgToAnns[img_id]}
            full = [sc.render_shape(s, h, w) for s in info["shapes"]]
            assert 1 <= len(full) <= 6
            for n, (shape, f) in enumerate(zip(info["shapes"], full)):
                later = np.zeros((h, w), bool)
                for g in full[n + 1:]:
                    later |= g
                visible = f & ~later                      # later instances occlude earlier ones
                if shape["shape"] == "disc":
                    assert np.array_equal(f, _disc(shape, h, w))
                    discs += 1
                if shape["ann_id"] is None:
                    assert visible.sum() < 20 or visible.sum() < 0.15 * f.sum()
                    dropped += 1
                    continue
                ann = anns.pop(shape["ann_id"])
                mask = coco.annToMask(ann)
                assert isinstance(ann["segmentation"]["counts"], str)     # compressed RLE
                assert np.array_equal(mask.astype(bool), visible)
                assert visible.sum() >= 20 and visible.sum() >= 0.15 * f.sum()
                assert ann["area"] == int(mask.sum()) and ann["bbox"] == _extent(mask)
                assert ann["category_id"] == sc.CATEGORIES.index(shape["shape"]) + 1 and ann["iscrowd"] == 0
            assert not anns                                 # every annotation is a painted shape
        assert discs > 0 and (split == "train" or dropped > 0)


def test_instances_cover_all_area_bins(inst_root):
    coco = _coco(inst_root / "annotations" / "instances_val.json")
    areas = np.array([a["area"] for a in coco.anns.values()])
    assert (areas < 32 ** 2).sum() >= 5 and ((areas >= 32 ** 2) & (areas < 96 ** 2)).sum() >= 5
    assert (areas >= 96 ** 2).sum() >= 1
    counts = np.bincount([a["category_id"] for a in coco.anns.values()], minlength=6)[1:]
    assert counts.min() >= 5 and len(set(a["image_id"] for a in coco.anns.values())) == len(coco.imgs)


def test_instances_load_and_flip(inst_root):
    ds = CocoDetection(inst_root, "annotations/instances_train.json", "images/train")
    assert ds.class_names == list(sc.CATEGORIES) and len(ds) == 12
    img, t = ds[0]
    h, w = t["meta"]["orig_size"]
    for box, mask in zip(t["boxes"], t["masks"]):            # xyxy = the visible mask's extent
        x, y, bw, bh = _extent(mask.numpy())
        assert box.tolist() == [x, y, x + bw, y + bh]
    _, f = RandomFlip(1.0)(img, t)
    for box, mask in zip(f["boxes"], f["masks"]):
        x, y, bw, bh = _extent(mask.numpy())
        assert box.tolist() == [x, y, x + bw, y + bh]
    tf = build_detection_transform(True, scales=(96, 128, 160), max_size=400)
    ds = CocoDetection(inst_root, "annotations/instances_train.json", "images/train", transform=tf)
    a, b = ds[(3, 77)], ds[(3, 77)]
    assert torch.equal(a[0], b[0]) and a[1]["meta"] == b[1]["meta"]
    metas = [ds[(3, s)][1]["meta"] for s in range(30)]
    assert len({m["flip"] for m in metas}) == 2 and len({m["img_size"] for m in metas}) == 3


def test_keypoint_figures(kp_root):
    coco = _coco(kp_root / "annotations" / "person_keypoints_train.json")
    person = coco.cats[1]
    assert person["name"] == "person" and tuple(person["keypoints"]) == sc.KEYPOINT_NAMES
    assert person["skeleton"][0] == [16, 14] and len(person["skeleton"]) == 19
    seen_v = set()
    per_image = []
    for img_id, info in coco.imgs.items():
        h, w = info["height"], info["width"]
        full = [sc.render_figure(f, h, w) for f in info["figures"]]
        per_image.append(len(full))
        anns = {a["id"]: a for a in coco.imgToAnns[img_id]}
        for n, fig in enumerate(info["figures"]):
            later = np.zeros((h, w), bool)
            for g in full[n + 1:]:
                later |= g
            if fig["ann_id"] is None:
                continue
            ann = anns.pop(fig["ann_id"])
            mask = coco.annToMask(ann).astype(bool)
            assert np.array_equal(mask, full[n] & ~later)
            assert ann["bbox"] == _extent(mask) and ann["area"] == mask.sum()
            kp = np.asarray(ann["keypoints"], np.float64).reshape(17, 3)
            for (x, y), (kx, ky, v) in zip(fig["joints"], kp):
                inside = 0 <= x < w and 0 <= y < h
                if not inside:
                    assert (kx, ky, v) == (0, 0, 0)
                else:
                    assert (kx, ky) == (x, y) and v == (1 if later[int(y), int(x)] else 2)
                seen_v.add(int(v))
            assert ann["num_keypoints"] == int((kp[:, 2] > 0).sum())
            j = np.asarray(fig["joints"])
            assert j[5, 0] > j[6, 0] and j[11, 0] > j[12, 0]   # facing the camera: its left on the image's right
        assert not anns
    assert seen_v == {0, 1, 2} and set(per_image) <= {1, 2, 3} and len(set(per_image)) > 1


def test_flipped_keypoint_sample(kp_root):
    ds = CocoDetection(kp_root, "annotations/person_keypoints_train.json", "images/train", with_keypoints=True)
    img, t = ds[0]
    w = img.shape[-1]
    _, f = RandomFlip(1.0)(img, t)
    src, out = t["keypoints"], f["keypoints"]
    names = list(sc.KEYPOINT_NAMES)
    for k, name in enumerate(names):
        other = names.index(name.replace("left", "#").replace("right", "left").replace("#", "right"))
        vis = src[:, other, 2] > 0
        assert torch.equal(out[:, k, 2], src[:, other, 2])
        assert torch.equal(out[vis, k, 0], w - src[vis, other, 0]) and torch.equal(out[vis, k, 1], src[vis, other, 1])
        assert out[~vis, k].abs().sum() == 0


def test_deterministic_cached_atomic(tmp_path):
    a = sc.write_synthetic_instances(tmp_path / "a", num_train=3, num_val=2, seed=1)
    b = sc.write_synthetic_instances(tmp_path / "b", num_train=5, num_val=2, seed=1)
    c = sc.write_synthetic_instances(tmp_path / "c", num_train=3, num_val=2, seed=2)
    ja, jb, jc = (json.loads((r / "annotations" / "instances_train.json").read_text()) for r in (a, b, c))
    assert ja["images"] == jb["images"][:3] and ja["annotations"] == jb["annotations"][:len(ja["annotations"])]
    assert ja["images"] != jc["images"]
    for name in ("000000000001.png", "000000000002.png"):  # each image depends on (seed, split, index) only
        assert (a / "images" / "val" / name).read_bytes() == (b / "images" / "val" / name).read_bytes()
    stamp = (a / "annotations" / "instances_train.json").stat().st_mtime_ns
    assert sc.write_synthetic_instances(a, num_train=3, num_val=2, seed=1) == a        # reused as it is
    assert (a / "annotations" / "instances_train.json").stat().st_mtime_ns == stamp
    sc.write_synthetic_instances(a, num_train=2, num_val=1, seed=1)                   # other arguments: replaced
    assert len(list((a / "images" / "train").iterdir())) == 2
    assert json.loads((a / "dataset.json").read_text())["num_train"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]            # no temporary folders left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DataError, match="mine"):
        sc.write_synthetic_keypoints(tmp_path / "mine", num_train=1, num_val=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    k = sc.write_synthetic_keypoints(tmp_path / "k", num_train=2, num_val=1)
    assert sorted(p.name for p in (k / "annotations").iterdir()) == ["person_keypoints_train.json",
                                                                   "person_keypoints_val.json"]


def test_default_root(monkeypatch, tmp_path):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path))
    assert sc.default_root() == tmp_path / "synthetic-coco-instances"
    assert sc.default_root("keypoints") == tmp_path / "synthetic-coco-keypoints"


@pytest.mark.parametrize("kind", ["bbox", "segm", "keypoints"])
def test_cocoeval_of_the_ground_truth_is_perfect(inst_root, kp_root, kind):
    from pycocotools.cocoeval import COCOeval
    path = (kp_root / "annotations" / "person_keypoints_val.json" if kind == "keypoints"
            else inst_root / "annotations" / "instances_val.json")
    gt = _coco(path)
    results = [dict(a, score=1.0) for a in gt.anns.values()]
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, kind)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)   # AP
    if kind != "keypoints":
        assert min(ev.stats[3:6]) == pytest.approx(1.0)   # APs, APm, APl all defined (all bins present)

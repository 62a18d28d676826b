"""COCO json datasets (pycocotools) and the detection transforms: annotations, resize, flip, seeding, collate."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("pycocotools")
from pycocotools import mask as mask_utils  # noqa: E402

from vitlab.data.coco import CocoDetection  # noqa: E402
from vitlab.data.det_transforms import (  # noqa: E402
    COCO_FLIP_PAIRS, MMDET_MEAN, MMDET_STD, Normalize, RandomFlip, Resize, build_detection_transform,
    collate_detection, flip_keypoints, rescale_size)
from vitlab.data.folder import Skipped  # noqa: E402
from vitlab.errors import DataError  # noqa: E402

H, W = 30, 40


def _rle(mask: np.ndarray, compressed: bool) -> dict:
    """COCO RLE of a mask: compressed (string counts) or uncompressed (list counts, column-major runs)."""
    if compressed:
        r = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        return {"size": list(r["size"]), "counts": r["counts"].decode("ascii")}
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, cur, run = [], 0, 0
    for v in flat:
        if v != cur:
            counts.append(run)
            cur, run = v, 0
        run += 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _blob(y0, y1, x0, x1) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[y0:y1, x0:x1] = 1
    m[y0, x0] = 0  # not a plain rectangle
    return m


@pytest.fixture(scope="module")
def coco_dir(tmp_path_factory):
    """A hand-written COCO set: polygon, uncompressed and compressed RLE, crowd, degenerate box, keypoints,
    an image without annotations, one with only a crowd region, one corrupt file, one 16-bit PNG."""
    root = tmp_path_factory.mktemp("coco")
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    names = ["a.png", "b.png", "empty.png", "crowdonly.png", "corrupt.png", "deep.png"]
    for n in names[:4]:
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(root / "images" / n)
    (root / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    Image.fromarray((rng.integers(0, 65535, (H, W))).astype(np.uint16)).save(root / "images" / "deep.png")
    images = [{"id": 10 + i, "file_name": n, "height": H, "width": W} for i, n in enumerate(names)]
    m_unc, m_cmp = _blob(5, 15, 20, 30), _blob(1, 28, 1, 12)
    kp = [0.0] * 51
    kp[0:3] = [22.0, 6.0, 2]     # nose
    kp[3:6] = [20.0, 5.0, 2]     # left eye
    kp[6:9] = [24.0, 5.0, 1]     # right eye
    kp[15:18] = [18.0, 10.0, 2]  # left shoulder; right shoulder (18:21) invisible
    anns = [
        {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 8, 5], "area": 40, "iscrowd": 0,
         "segmentation": [[2, 3, 10, 3, 10, 8, 2, 8]]},
        {"id": 2, "image_id": 10, "category_id": 1, "bbox": [20, 5, 10, 10], "area": int(m_unc.sum()), "iscrowd": 0,
         "segmentation": _rle(m_unc, False), "keypoints": kp, "num_keypoints": 4},
        {"id": 3, "image_id": 10, "category_id": 3, "bbox": [1, 1, 11, 27], "area": int(m_cmp.sum()), "iscrowd": 0,
         "segmentation": _rle(m_cmp, True)},
        {"id": 4, "image_id": 10, "category_id": 1, "bbox": [0, 20, 40, 10], "area": 400, "iscrowd": 1,
         "segmentation": _rle(_blob(20, 30, 0, 40), False)},
        {"id": 5, "image_id": 10, "category_id": 3, "bbox": [5, 5, 0.5, 10], "area": 5, "iscrowd": 0,
         "segmentation": [[5, 5, 5.5, 5, 5.5, 15, 5, 15]]},       # degenerate: w < 1
        {"id": 6, "image_id": 11, "category_id": 3, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": [[4, 4, 24, 4, 24, 14, 4, 14]]},
        {"id": 7, "image_id": 13, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1,
         "segmentation": _rle(_blob(0, 10, 0, 10), False)},
        {"id": 8, "image_id": 14, "category_id": 3, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": [[4, 4, 24, 4, 24, 14, 4, 14]]},
        {"id": 9, "image_id": 15, "category_id": 7, "bbox": [4, 4, 20, 10], "area": 200, "iscrowd": 0,
         "segmentation": [[4, 4, 24, 4, 24, 14, 4, 14]]},
    ]
    cats = [{"id": 7, "name": "kite"}, {"id": 3, "name": "car"},
            {"id": 1, "name": "person", "keypoints": [f"k{i}" for i in range(17)], "skeleton": [[1, 2]]}]
    (root / "annotations" / "train.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": cats}))
    return root, {"unc": m_unc, "cmp": m_cmp, "kp": kp}


def _dataset(root, **kw):
    return CocoDetection(root, "annotations/train.json", "images", **kw)


def _by_file(ds, name):
    return next(i for i in range(len(ds)) if ds.coco.imgs[ds.ids[i]]["file_name"] == name)


def test_annotations_masks_boxes_labels(coco_dir):
    root, ref = coco_dir
    ds = _dataset(root, with_keypoints=True)
    assert ds.cat_ids == [1, 3, 7] and ds.class_names == ["person", "car", "kite"]
    assert ds.coco.getImgIds() and len(ds.coco.anns) == 9
    img, t = ds[_by_file(ds, "a.png")]
    assert img.shape == (3, H, W) and img.dtype == torch.float32 and 0 <= img.min() and img.max() <= 255
    # ann 5 (w < 1) dropped; ann order kept: polygon, uncompressed RLE, compressed RLE, crowd
    assert t["labels"].tolist() == [2, 0, 1, 0]
    assert t["crowd"].tolist() == [False, False, False, True]
    assert torch.equal(t["boxes"][0], torch.tensor([2.0, 3.0, 10.0, 8.0]))      # xywh -> xyxy, x2 = x + w
    assert torch.equal(t["boxes"][2], torch.tensor([1.0, 1.0, 12.0, 28.0]))
    masks = t["masks"].numpy()
    assert masks.dtype == np.uint8 and masks.shape == (4, H, W)
    poly = np.zeros((H, W), np.uint8)
    poly[3:8, 2:10] = 1                     # pycocotools' rasterisation of the integer rectangle
    assert np.array_equal(masks[0], poly)
    assert np.array_equal(masks[1], ref["unc"])   # uncompressed RLE, exact
    assert np.array_equal(masks[2], ref["cmp"])   # compressed RLE, exact
    assert np.array_equal(masks[3], _blob(20, 30, 0, 40))  # crowd region decoded too
    kp = t["keypoints"]
    assert kp.shape == (4, 17, 3)
    assert torch.equal(kp[1], torch.tensor(ref["kp"], dtype=torch.float32).view(17, 3))
    assert kp[0].abs().sum() == 0 and kp[2].abs().sum() == 0  # not a keypoint category
    m = t["meta"]
    assert m["image_id"] == 10 and m["file_name"] == "a.png" and m["orig_size"] == (H, W) == m["img_size"]
    assert m["scale_factor"] == (1.0, 1.0) and m["flip"] is False


def test_filter_empty_and_options(coco_dir):
    root, _ = coco_dir
    names = lambda ds: sorted(ds.coco.imgs[i]["file_name"] for i in ds.ids)  # noqa: E731
    assert names(_dataset(root)) == ["a.png", "b.png", "corrupt.png", "deep.png"]  # no empty, no crowd-only
    assert len(_dataset(root, filter_empty=False)) == 6
    _, t = _dataset(root, with_masks=False, filter_empty=False)[_by_file(_dataset(root, filter_empty=False),
                                                                          "crowdonly.png")]
    assert t["masks"] is None and t["keypoints"] is None and t["crowd"].tolist() == [True]
    ds = _dataset(root, filter_empty=False)
    _, t = ds[_by_file(ds, "empty.png")]
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, H, W) and t["labels"].dtype == torch.int64


def test_sixteen_bit_image_and_lazy_loading(coco_dir, monkeypatch):
    root, _ = coco_dir
    import vitlab.data.coco as coco_mod
    calls = []
    real = coco_mod.load_image
    monkeypatch.setattr(coco_mod, "load_image", lambda p, mode="RGB": calls.append(p) or real(p, mode))
    ds = _dataset(root)
    assert calls == []                       # constructing reads no image
    img, _ = ds[_by_file(ds, "deep.png")]
    assert len(calls) == 1 and img.shape == (3, H, W) and img.max() <= 255 and img.std() > 20


def test_corrupt_image_skipped_and_named(coco_dir):
    root, _ = coco_dir
    ds = _dataset(root, transform=build_detection_transform(False, scales=(64,), max_size=100))
    bad = ds[_by_file(ds, "corrupt.png")]
    assert isinstance(bad, Skipped) and bad.path.endswith("corrupt.png")
    (x, metas), targets, skipped = collate_detection([ds[_by_file(ds, "a.png")], bad, None])
    assert x.shape[0] == 1 and len(targets) == 1 and len(metas) == 1
    assert len(skipped) == 2 and "corrupt.png" in skipped[0] and skipped[1] == "unreadable sample"
    assert collate_detection([bad]) == (None, None, [str(bad)])


def test_missing_files_named(coco_dir, tmp_path):
    root, _ = coco_dir
    with pytest.raises(DataError, match="nothere.json"):
        CocoDetection(root, "annotations/nothere.json", "images")
    with pytest.raises(DataError, match="noimages"):
        CocoDetection(root, "annotations/train.json", "noimages")
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(DataError, match="bad.json"):
        CocoDetection(tmp_path, "bad.json", ".")


# ---------------------------------------------------------------- transforms

def test_rescale_size_is_mmcv_keep_ratio():
    assert rescale_size(640, 480, (1333, 800)) == (1067, 800, 800 / 480)   # short side reaches 800
    assert rescale_size(1000, 200, (1333, 800)) == (1333, 267, 1.333)        # long side capped at 1333
    assert rescale_size(480, 640, (800, 1333))[:2] == (800, 1067)            # order of the pair does not matter
    w, h, f = rescale_size(427, 640, (1333, 512))
    assert f == pytest.approx(min(1333 / 640, 512 / 427)) and (w, h) == (int(427 * f + 0.5), int(640 * f + 0.5))


def _sample(h=40, w=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.rand((3, h, w), generator=g) * 255
    masks = torch.zeros((2, h, w), dtype=torch.uint8)
    masks[0, 5:20, 10:30] = 1
    masks[1, 22:38, 40:59] = 1
    kp = torch.zeros((2, 17, 3))
    kp[0, :, 0] = torch.arange(17.0) + 3
    kp[0, :, 1] = torch.arange(17.0) * 2 + 1
    kp[0, :, 2] = 2
    kp[0, 4] = 0                # invisible right ear
    kp[0, 7, 2] = 1             # occluded left elbow
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 20.0], [40.0, 22.0, 59.0, 38.0]]),
              "labels": torch.tensor([0, 1]), "masks": masks, "keypoints": kp, "crowd": torch.tensor([False, False]),
              "meta": {"image_id": 1, "file_name": "x", "orig_size": (h, w), "img_size": (h, w),
                       "scale_factor": (1.0, 1.0), "flip": False}}
    return img, target


def test_resize_scales_everything():
    img, t = _sample()
    out, r = Resize((100, 80))(img, t)            # factor min(100/60, 80/40) = 1.667 -> 100 x 67
    assert out.shape == (3, 67, 100) and r["meta"]["img_size"] == (67, 100)
    sx, sy = 100 / 60, 67 / 40
    assert r["meta"]["scale_factor"] == pytest.approx((sx, sy))
    assert torch.allclose(r["boxes"], t["boxes"] * torch.tensor([sx, sy, sx, sy]))
    assert r["masks"].shape == (2, 67, 100) and r["masks"].dtype == torch.uint8
    assert set(r["masks"].unique().tolist()) == {0, 1}
    assert abs(int(r["masks"][0].sum()) - 15 * 20 * sx * sy) < 60          # nearest keeps the area
    vis = t["keypoints"][..., 2] > 0
    assert torch.allclose(r["keypoints"][..., 0][vis], t["keypoints"][..., 0][vis] * sx)
    assert torch.allclose(r["keypoints"][..., 1][vis], t["keypoints"][..., 1][vis] * sy)
    assert r["keypoints"][0, 4].abs().sum() == 0 and r["keypoints"][1].abs().sum() == 0  # v = 0 stays (0, 0, 0)
    assert torch.equal(r["keypoints"][..., 2], t["keypoints"][..., 2])
    small, rs = Resize((30, 20))(img, t)          # shrinking: antialiased, boxes clipped inside the image
    assert small.shape == (3, 20, 30) and rs["boxes"][:, 2].max() <= 30 and rs["boxes"][:, 3].max() <= 20
    assert small.std() < img.std() * 0.8          # antialiasing averages the noise down


def test_multiscale_value_mode_choices():
    scales = [(1333, s) for s in range(480, 801, 32)]
    rs = Resize(scales)
    img, t = _sample(h=100, w=150)
    seen = set()
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        out, r = rs(img, t, g)
        short = min(out.shape[-2:])
        assert short in range(480, 801, 32)       # aspect 1.5 never reaches the 1333 cap
        seen.add(short)
        g2 = torch.Generator().manual_seed(seed)
        assert rs.choose_scale(g2) == (1333, short)
    assert seen == set(range(480, 801, 32))
    rr = Resize([(1333, 640), (1333, 800)], multiscale_mode="range")
    draws = {rr.choose_scale(torch.Generator().manual_seed(s))[1] for s in range(300)}
    assert min(draws) >= 640 and max(draws) <= 800 and len(draws) > 50


def test_flip_mirrors_and_swaps_keypoints():
    img, t = _sample()
    out, f = RandomFlip(1.0)(img, t)
    w = img.shape[-1]
    assert f["meta"]["flip"] is True and torch.equal(out, img.flip(-1))
    assert torch.equal(f["boxes"][:, 0], w - t["boxes"][:, 2]) and torch.equal(f["boxes"][:, 2], w - t["boxes"][:, 0])
    assert torch.equal(f["masks"], t["masks"].flip(-1))
    kp, ok = f["keypoints"], t["keypoints"]
    partner = {0: 0}
    for a, b in COCO_FLIP_PAIRS:
        partner[a], partner[b] = b, a
    for k in range(17):
        src = ok[:, partner[k]]
        vis = src[:, 2] > 0
        assert torch.equal(kp[:, k, 2], src[:, 2])
        assert torch.equal(kp[vis, k, 0], w - src[vis, 0]) and torch.equal(kp[vis, k, 1], src[vis, 1])
        assert kp[~vis, k].abs().sum() == 0           # invisible stays (0, 0, 0)
    assert kp[0, 3].abs().sum() == 0                  # the invisible right ear is now the left ear
    assert kp[0, 8, 2] == 1                           # the occluded left elbow is now the right elbow
    assert torch.equal(flip_keypoints(kp, w), ok)     # flipping twice is the identity
    out2, f2 = RandomFlip(1.0)(out, f)
    assert torch.equal(out2, img) and torch.equal(f2["boxes"], t["boxes"]) and f2["meta"]["flip"] is False
    _, n = RandomFlip(0.0)(img, t, torch.Generator().manual_seed(0))
    assert n["meta"]["flip"] is False and torch.equal(n["boxes"], t["boxes"])


def test_flipped_boxes_match_flipped_mask_extents():
    img, t = _sample()
    t = dict(t)
    ys, xs = torch.nonzero(t["masks"][0], as_tuple=True)
    t["boxes"] = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    t["masks"], t["keypoints"], t["labels"] = t["masks"][:1], t["keypoints"][:1], t["labels"][:1]
    _, f = RandomFlip(1.0)(img, t)
    ys, xs = torch.nonzero(f["masks"][0], as_tuple=True)
    assert f["boxes"][0].tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def test_normalize_statistics():
    assert MMDET_MEAN == pytest.approx(tuple(v * 255 for v in (0.485, 0.456, 0.406)))
    assert MMDET_STD == pytest.approx(tuple(v * 255 for v in (0.229, 0.224, 0.225)))
    img = torch.tensor(MMDET_MEAN).view(3, 1, 1).expand(3, 4, 5).clone()
    out, _ = Normalize()(img, {})
    assert out.abs().max() < 1e-5
    assert Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)).mean == pytest.approx(MMDET_MEAN)
    n = Normalize()
    assert torch.equal(n.denormalize(n(img + 10, {})[0]), (img + 10).round().to(torch.uint8))


def test_seeded_samples_are_reproducible(coco_dir):
    root, _ = coco_dir
    tf = build_detection_transform(True, scales=range(32, 129, 32), max_size=200, flip_prob=0.5)
    ds = _dataset(root, transform=tf, with_keypoints=True)
    i = _by_file(ds, "a.png")
    a, b = ds[(i, 123)], ds[(i, 123)]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1]["boxes"], b[1]["boxes"])
    assert torch.equal(a[1]["masks"], b[1]["masks"]) and a[1]["meta"] == b[1]["meta"]
    outcomes = {(s[1]["meta"]["flip"], s[1]["meta"]["img_size"]) for s in (ds[(i, seed)] for seed in range(40))}
    assert {f for f, _ in outcomes} == {True, False} and len({sz for _, sz in outcomes}) == 4
    # the sample of a key does not depend on what was loaded before it (workers, resume)
    ds[(i, 5)], ds[(i, 6)]
    c = ds[(i, 123)]
    assert torch.equal(a[0], c[0]) and torch.equal(a[1]["keypoints"], c[1]["keypoints"])
    ev = build_detection_transform(False, scales=range(32, 129, 32), max_size=200)
    img, t = _dataset(root, transform=ev)[i]
    assert t["meta"]["flip"] is False and min(img.shape[-2:]) == 128
    assert abs(float(img.mean())) < 2.0


def test_collate_pads_to_multiples_of_32(coco_dir):
    root, _ = coco_dir
    ds = _dataset(root, transform=build_detection_transform(True, scales=(50, 70), max_size=100))
    batch = [ds[(i, s)] for i, s in ((0, 1), (1, 2), (3, 3))]
    (x, metas), targets, skipped = collate_detection(batch)
    assert skipped == [] and x.shape[0] == 3 and x.shape[2] % 32 == 0 and x.shape[3] % 32 == 0
    hmax = max(t[1]["meta"]["img_size"][0] for t in batch)
    wmax = max(t[1]["meta"]["img_size"][1] for t in batch)
    assert x.shape[2:] == (-(-hmax // 32) * 32, -(-wmax // 32) * 32)
    for (img, t), m, xi in zip(batch, metas, x):
        h, w = m["img_size"]
        assert m["pad_shape"] == (-(-h // 32) * 32, -(-w // 32) * 32) and m["batch_input_shape"] == tuple(x.shape[2:])
        assert torch.equal(xi[:, :h, :w], img) and xi[:, h:].abs().sum() == 0 and xi[:, :, w:].abs().sum() == 0
    assert targets[0]["meta"] is metas[0] and targets[0]["boxes"].shape[1] == 4

"""Segmentation data: the built-in texture-scenes set, ADE20K-layout folders, augmentation, errors, CLI."""
import json
import random

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("skimage", reason="the built-in set cuts its textures from scikit-image's bundled images")

from vitlab.data.segmentation import SegAugment, SegmentationDataError, SegmentationFolder  # noqa: E402
from vitlab.data.synthetic_scenes import CLASS_NAMES, write_texture_scenes  # noqa: E402
from vitlab.segmentation.visualize import overlay_panel  # noqa: E402


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_texture_scenes(tmp_path_factory.mktemp("scenes"), num_train=6, num_val=2, size=48, seed=1)


def test_texture_scenes_are_deterministic_ade_layout(scenes, tmp_path):
    again = write_texture_scenes(tmp_path / "again", num_train=6, num_val=2, size=48, seed=1)
    for sub in ("images/training", "annotations/training", "annotations/validation"):
        names = sorted(p.name for p in (scenes / sub).iterdir())
        assert names == sorted(p.name for p in (again / sub).iterdir()) and len(names) in (6, 2)
        for n in names:
            assert (scenes / sub / n).read_bytes() == (again / sub / n).read_bytes()
    meta = json.loads((scenes / "dataset.json").read_text())
    assert meta["classes"] == list(CLASS_NAMES) and meta["reduce_zero_label"] is True
    labels = np.stack([np.asarray(Image.open(p)) for p in sorted((scenes / "annotations/training").iterdir())])
    assert labels.max() <= len(CLASS_NAMES) and (labels == 0).mean() < 0.15  # 0 only on region borders
    assert len(np.unique(labels)) > 4


def test_texture_regions_follow_the_mask(scenes):
    """Each labelled region has the colour statistics of its own texture (masks are exact)."""
    ds = SegmentationFolder(scenes, "training", reduce_zero_label=True)
    img, label = ds.read(0)
    for c in label.unique():
        if c == 255:
            continue
        inside = img[:, label == c]
        assert inside.std(1).mean() > 1.0  # a real texture, not a flat fill
    assert ds.num_classes == len(CLASS_NAMES)


def test_reduce_zero_label_and_errors(tmp_path):
    root = tmp_path / "ade"
    for d in ("images/training", "annotations/training"):
        (root / d).mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images/training/a.jpg")
    Image.fromarray(np.array([[0, 1, 2, 3, 255, 1]] * 4, np.uint8)).save(root / "annotations/training/a.png")
    ds = SegmentationFolder(root, "train", num_classes=3, reduce_zero_label=True)
    assert ds[0][1][0].tolist() == [255, 0, 1, 2, 255, 0]
    with pytest.raises(SegmentationDataError, match=r"a\.png: label value 3 outside \[0, 3\)"):
        SegmentationFolder(root, "train", num_classes=3)[0]
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "annotations/training/a.png")
    with pytest.raises(SegmentationDataError, match=r"a\.png: label size 5x5 differs from image a\.jpg size 6x4"):
        ds[0]
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "annotations/training/a.png")
    with pytest.raises(SegmentationDataError, match="single-channel"):
        ds[0]
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(root / "images/training/b.png")
    with pytest.raises(FileNotFoundError, match=r"annotations/training/b\.png"):
        SegmentationFolder(root, "training")
    with pytest.raises(FileNotFoundError, match="ADE20K layout"):
        SegmentationFolder(root, "validation")


def test_augmentation_keeps_image_and_label_aligned():
    label = torch.randint(0, 5, (40, 30))
    img = label[None].repeat(3, 1, 1).float() * 40
    aug = SegAugment(crop_size=32, ratio_range=(1.0, 1.0), photometric=False, flip_prob=1.0, cat_max_ratio=1.0)
    out_img, out_label = aug(img, label, random.Random(0))
    assert out_img.shape == (3, 32, 30) and out_label.shape == (32, 30)
    torch.testing.assert_close(out_img[0], out_label.float() * 40)  # flipped and cropped together
    big = SegAugment(crop_size=32, ratio_range=(2.0, 2.0))
    i2, l2 = big(img, label, random.Random(1))
    assert i2.shape == (3, 32, 32) and set(l2.unique().tolist()) <= set(range(5))


def test_training_items_padded_with_ignore(scenes):
    ds = SegmentationFolder(scenes, "training", reduce_zero_label=True,
                            augment=SegAugment(crop_size=64, ratio_range=(0.5, 0.5)))
    img, label = ds[(0, 7)]
    assert img.shape == (3, 64, 64) and (label[24:] == 255).all() and (img[:, 24:] == 0).all()
    torch.testing.assert_close(ds[(0, 7)][0], img)          # the sample's seed fixes its augmentation
    assert not torch.equal(ds[(0, 8)][1], label) or not torch.equal(ds[(0, 8)][0], img)


def test_overlay_png_has_titles_and_a_legend(tmp_path):
    from vitlab.segmentation.visualize import save_overlay
    pred = torch.zeros(16, 20, dtype=torch.long)
    pred[:, 10:] = 2
    label = pred.clone()
    label[:4] = 255
    path = save_overlay(tmp_path / "o.png", torch.zeros(3, 16, 20, dtype=torch.uint8), pred, label, 3,
                        ["sky", "road", "car"], title="run x")
    picture = np.asarray(Image.open(path))
    assert picture.shape[1] > picture.shape[0] * 2 and picture.std() > 10   # three panels and a legend


def test_overlay_panel_shape():
    panel = overlay_panel(torch.zeros(3, 8, 10, dtype=torch.uint8), torch.ones(8, 10, dtype=torch.long),
                          torch.full((8, 10), 255), num_classes=3)
    assert panel.shape == (8, 3 * 10 + 2 * 4, 3) and panel.dtype == np.uint8


def test_cli_segment_train_and_eval(scenes, tmp_path, capsys):
    from vitlab.cli.main import main
    out = tmp_path / "run"
    assert main(["segment", "train", "--data", str(scenes), "--iters", "2", "--batch-size", "2", "--img-size", "32",
                 "--warmup-iters", "1", "--eval-interval", "2", "-o", str(out), "--overlays", "1", "--threads", "1",
                 "--progress", "log", "--json"]) == 0
    text = capsys.readouterr().out
    result = json.loads(text[text.index("\n{\n") + 1:])                 # the JSON follows the log lines
    assert result["step"] == 2 and 0 <= result["mIoU"] <= 100 and 0 <= result["aAcc"] <= 100
    for f in ("config.yaml", "metrics.jsonl", "last.pth", "model/config.json", "eval.json", "per_class.txt",
              "curves.png"):
        assert (out / f).is_file(), f
    assert len(list((out / "overlays").glob("*.png"))) == 1
    ev = tmp_path / "eval"
    args = ["segment", "eval", str(out / "model"), "--data", str(scenes), "--mode", "slide", "--crop-size", "32",
            "--stride", "16", "--flip", "--threads", "1", "-o", str(ev), "--overlays", "1", "--json"]
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert again == json.loads((ev / "eval.json").read_text()) and set(again["per_class"]) == set(CLASS_NAMES)
    assert 0 <= again["aAcc"] <= 100 and len(list((ev / "overlays").glob("*.png"))) == 1
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err       # a used --output is refused
    assert main(args + ["--overwrite"]) == 0
    capsys.readouterr()
    assert main(["segment", "eval", str(out / "model"), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlab segment: error: ") and "ADE20K layout" in err

"""Image folders: formats, seeded splits, explicit train/val, corrupt files skipped and named, empty classes."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data.folder import ImageFolder, collate_skipping
from vitlab.data.registry import DataRequest, build_dataset
from vitlab.data.transforms import build_eval_transform

CFG = {"input_size": (3, 16, 16), "crop_pct": 1.0, "mean": (0.5,) * 3, "std": (0.5,) * 3}


def _make_folder(root, classes=("cat", "dog"), per_class=5, corrupt=0):
    rng = np.random.default_rng(0)
    for label, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            ext = ("png", "jpg", "webp")[i % 3]
            Image.fromarray(arr).save(d / f"{i}.{ext}")
    for i in range(corrupt):
        (root / classes[0] / f"broken{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_image_folder_reads_png_jpeg_webp_and_labels_by_sorted_folder(tmp_path):
    _make_folder(tmp_path, classes=("zebra", "ant"))
    ds = ImageFolder(tmp_path, build_eval_transform(CFG))
    assert ds.classes == ["ant", "zebra"] and len(ds) == 10
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and y == 0 and ds[9][1] == 1


def test_corrupt_images_are_skipped_and_named(tmp_path):
    _make_folder(tmp_path, corrupt=2)
    ds = ImageFolder(tmp_path, build_eval_transform(CFG))
    assert len(ds) == 12
    batch = collate_skipping([ds[i] for i in range(len(ds))])
    x, y, skipped = batch
    assert x.shape[0] == 10 and torch.equal(torch.bincount(y), torch.tensor([5, 5]))
    assert sorted(s.split(": ", 1)[0] for s in skipped) == [str(tmp_path / "cat" / f"broken{i}.jpg") for i in (0, 1)]
    assert all(s.split(": ", 1)[1] for s in skipped)  # Pillow's message comes along


def test_corrupt_images_are_reported_by_evaluation(tmp_path):
    from vitlab.engine.loaders import eval_loader
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.evaluate import evaluate
    _make_folder(tmp_path, corrupt=3)
    ds = ImageFolder(tmp_path, build_eval_transform(CFG))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 2))
    res = evaluate(model, eval_loader(ds, batch_size=4, workers=0, dist=DistInfo()), 2, torch.device("cpu"))
    assert res["count"] == 10 and res["skipped"] == 3
    assert sorted(n.split(": ")[0].rsplit("/", 1)[-1] for n in res["skipped_files"]) == [f"broken{i}.jpg" for i in range(3)]


def test_empty_class_folder_is_an_error(tmp_path):
    _make_folder(tmp_path)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="class folder.*with no images.*empty_class"):
        ImageFolder(tmp_path)


def test_folder_dataset_seeded_split_and_explicit_train_val(tmp_path):
    _make_folder(tmp_path / "one", per_class=10)
    req = DataRequest("folder", root=str(tmp_path / "one"), options={"val_fraction": 0.25, "split_seed": 3})
    a, b = build_dataset(req), build_dataset(req)
    assert len(a.val) == 5 and len(a.train) == 15 and a.val.samples == b.val.samples
    assert not set(s for s, _ in a.val.samples) & set(s for s, _ in a.train.samples)

    _make_folder(tmp_path / "two" / "train")
    _make_folder(tmp_path / "two" / "val", per_class=2)
    bundle = build_dataset(DataRequest("folder", root=str(tmp_path / "two")))
    assert bundle.class_names == ["cat", "dog"] and len(bundle.train) == 10 and len(bundle.val) == 4

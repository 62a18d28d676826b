"""Image folders give the right images: whole-folder evaluation, val/-only and train/-only layouts,
unreadable classes refused up front, 16-bit and float images scaled (not clipped), skipped files
named, unlabelled folders."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import folder as folder_mod
from vitlab.data.folder import (IMAGE_EXTENSIONS, ImageFolder, Skipped, UnlabelledImageFolder, collate_skipping,
                                load_image, scan_all_images)
from vitlab.data.registry import DataRequest, build_dataset
from vitlab.errors import DataError

GARBAGE = b"\xff\xd8\xff\xe0 not really a jpeg"


def _images(folder, n, start=0, size=(12, 10)):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def _class_folder(root, classes=("cat", "dog"), per_class=10):
    for name in classes:
        _images(root / name, per_class)
    return root


# --- which images evaluate ------------------------------------------------------------------------

def test_eval_whole_folder_evaluates_every_image(tmp_path):
    _class_folder(tmp_path, per_class=10)
    whole = build_dataset(DataRequest("folder", root=str(tmp_path), splits=("val",),
                                      options={"eval_whole_folder": True}))
    assert whole.train is None and len(whole.val) == 20
    assert [s for s, _ in whole.val.samples] == sorted(str(p) for p in tmp_path.rglob("*.png"))
    # without the option (or when training) it stays the seeded 10 % split
    split = build_dataset(DataRequest("folder", root=str(tmp_path), splits=("val",)))
    assert len(split.val) == 2
    train = build_dataset(DataRequest("folder", root=str(tmp_path), options={"eval_whole_folder": True}))
    assert len(train.val) == 2 and len(train.train) == 18


def test_val_folder_alone_is_the_evaluation_set(tmp_path):
    _class_folder(tmp_path / "val", per_class=3)
    bundle = build_dataset(DataRequest("folder", root=str(tmp_path), splits=("val",)))
    assert bundle.class_names == ["cat", "dog"] and len(bundle.val) == 6  # not one class called "val"
    assert bundle.info["val_source"] == str(tmp_path / "val")
    with pytest.raises(DataError, match="no train/ folder"):
        build_dataset(DataRequest("folder", root=str(tmp_path)))


def test_train_folder_alone_is_split(tmp_path):
    _class_folder(tmp_path / "train", per_class=10)
    bundle = build_dataset(DataRequest("folder", root=str(tmp_path), options={"val_fraction": 0.25}))
    assert bundle.class_names == ["cat", "dog"] and len(bundle.train) == 15 and len(bundle.val) == 5
    whole = build_dataset(DataRequest("folder", root=str(tmp_path), splits=("val",),
                                      options={"eval_whole_folder": True}))
    assert len(whole.val) == 20


def test_a_class_named_val_stays_a_class(tmp_path):
    _class_folder(tmp_path, classes=("cat", "val"), per_class=5)
    bundle = build_dataset(DataRequest("folder", root=str(tmp_path), splits=("val",),
                                       options={"eval_whole_folder": True}))
    assert bundle.class_names == ["cat", "val"] and len(bundle.val) == 10


# --- unreadable classes -----------------------------------------------------------------------------

def test_class_with_only_unreadable_files_is_an_error(tmp_path):
    _class_folder(tmp_path, classes=("cat", "dog"), per_class=3)
    bad = tmp_path / "zebra"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.jpg").write_bytes(GARBAGE)
    (tmp_path / "ant").mkdir()
    (tmp_path / "ant" / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="no image file can be opened") as e:
        ImageFolder(tmp_path)
    assert str(bad) in str(e.value) and str(tmp_path / "ant") in str(e.value)
    assert str(tmp_path / "cat") not in str(e.value)
    with pytest.raises(DataError, match="zebra"):
        build_dataset(DataRequest("folder", root=str(tmp_path)))


def test_one_readable_file_is_enough_and_healthy_classes_cost_one_probe(tmp_path, monkeypatch):
    _class_folder(tmp_path, classes=("cat",), per_class=4)
    (tmp_path / "dog").mkdir()
    for i in range(3):
        (tmp_path / "dog" / f"a{i}.jpg").write_bytes(GARBAGE)  # sorted before the one good file
    Image.new("RGB", (5, 5)).save(tmp_path / "dog" / "b.png")
    probes = []
    real = folder_mod.opens
    monkeypatch.setattr(folder_mod, "opens", lambda p: probes.append(p) or real(p))
    ds = ImageFolder(tmp_path)
    assert len(ds) == 8
    assert sum("cat" in p for p in probes) == 1 and sum("dog" in p for p in probes) == 4


# --- 16-bit and float images ----------------------------------------------------------------------

GRADIENT = np.linspace(0, 65535, 64 * 256).round().astype(np.uint16).reshape(64, 256)


@pytest.mark.parametrize("arr,ext,mode", [
    (GRADIENT, "png", "I;16"),
    (GRADIENT, "tif", "I;16"),
    (GRADIENT.astype(">u2"), "tif", "I;16B"),
    (GRADIENT.astype(np.int32), "tif", "I"),
])
def test_16_bit_images_are_scaled_not_clipped(tmp_path, arr, ext, mode):
    path = tmp_path / f"gradient.{ext}"
    Image.fromarray(arr).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    for want in ("RGB", "L"):
        out = load_image(str(path), want).astype(np.int64)
        assert out.dtype == np.int64 and out.min() == 0 and out.max() == 255
        assert (out == 255).mean() < 0.01
        expected = np.round(GRADIENT / 257.0)
        assert np.abs((out[..., 0] if want == "RGB" else out) - expected).max() <= 1


def test_16_bit_png_through_image_folder(tmp_path):
    (tmp_path / "a").mkdir()
    Image.fromarray(GRADIENT).save(tmp_path / "a" / "g.png")
    x, y = ImageFolder(tmp_path)[0]
    assert x.shape == (3, 64, 256) and x.dtype == torch.uint8 and y == 0
    assert int(x.max()) == 255 and float((x == 255).float().mean()) < 0.01


def test_float_and_wide_integer_images(tmp_path):
    unit = (GRADIENT / 65535.0).astype(np.float32)
    Image.fromarray(unit).save(tmp_path / "unit.tif")
    Image.fromarray(unit * 1000).save(tmp_path / "wide.tif")
    Image.fromarray(GRADIENT.astype(np.int32) * 256).save(tmp_path / "i32.tif")
    for name in ("unit.tif", "wide.tif", "i32.tif"):
        out = load_image(str(tmp_path / name), "L").astype(np.int64)
        assert out.min() == 0 and out.max() == 255 and (out == 255).mean() < 0.01, name
        assert np.abs(out - np.round(GRADIENT / 257.0)).max() <= 1, name
    # asking for a wide mode keeps the values
    assert load_image(str(tmp_path / "i32.tif"), "I").max() == 65535 * 256


def test_8_bit_images_are_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr[..., 0]).save(tmp_path / "g.png")
    assert np.array_equal(load_image(str(tmp_path / "a.png")), arr)
    assert np.array_equal(load_image(str(tmp_path / "g.png"), "L"), arr[..., 0])
    assert load_image(str(tmp_path / "a.png")).flags.writeable


# --- skipped samples carry their file names ---------------------------------------------------------

def test_skipped_samples_name_their_files(tmp_path):
    _class_folder(tmp_path, per_class=2)
    bad = tmp_path / "cat" / "zz_bad.jpg"
    bad.write_bytes(GARBAGE)
    ds = ImageFolder(tmp_path)
    item = ds[2]
    assert isinstance(item, Skipped) and item.path == str(bad) and item.reason
    assert str(item) == f"{bad}: {item.reason}"
    x, y, skipped = collate_skipping([ds[i] for i in range(len(ds))] + [None])
    assert x.shape[0] == 4 and y.tolist() == [0, 0, 1, 1]
    assert skipped == [str(item), "unreadable sample"]
    assert collate_skipping([ds[0], ds[1]])[2] == []
    assert collate_skipping([item, None]) == (None, None, [str(item), "unreadable sample"])


def test_collate_skipping_keeps_nested_samples():
    crops = lambda v: [torch.full((3, 4, 4), float(v)), torch.full((3, 2, 2), float(v))]  # noqa: E731
    x, y, skipped = collate_skipping([(crops(1), 0), Skipped("f.jpg", "OSError: broken"), (crops(2), 1)])
    assert isinstance(x, list) and x[0].shape == (2, 3, 4, 4) and x[1].shape == (2, 3, 2, 2)
    assert x[0][1].eq(2).all() and y.tolist() == [0, 1] and skipped == ["f.jpg: OSError: broken"]


def test_skipped_names_travel_through_a_worker_loader(tmp_path):
    from torch.utils.data import DataLoader
    _class_folder(tmp_path, per_class=2)
    (tmp_path / "dog" / "zz_bad.jpg").write_bytes(GARBAGE)
    ds = ImageFolder(tmp_path)
    batches = list(DataLoader(ds, batch_size=5, num_workers=1, collate_fn=collate_skipping))
    assert [len(b[2]) for b in batches] == [1] and batches[0][2][0].startswith(str(tmp_path / "dog" / "zz_bad.jpg"))


# --- unlabelled folders -----------------------------------------------------------------------------

def _seeded_flip(img, generator):
    img = img.float()
    return img.flip(-1) if generator is not None and torch.rand((), generator=generator) < 0.5 else img


def test_unlabelled_folder(tmp_path):
    _images(tmp_path / "b" / "deep", 2)
    _images(tmp_path, 2, start=10)
    _images(tmp_path / "a", 1, start=20, size=(10, 12))
    (tmp_path / ".cache").mkdir()
    _images(tmp_path / ".cache", 1, start=30)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b" / "zz_bad.jpg").write_bytes(GARBAGE)
    files = scan_all_images(tmp_path)
    assert files == sorted(files) and len(files) == 6 and not any(".cache" in f for f in files)
    ds = UnlabelledImageFolder(tmp_path, transform=_seeded_flip)
    assert len(ds) == 6 and ds.seeded and ds.num_classes == 0
    x, y = ds[0]
    assert y == -1 and x.shape == (3, 12, 10)
    for i in range(len(ds)):
        if not isinstance(ds[i], Skipped):
            assert torch.equal(ds[(i, 7)][0], ds[(i, 7)][0])  # a key's augmentation is a function of its seed
    assert any(not torch.equal(ds[(0, s)][0], ds[(0, 0)][0]) for s in range(1, 20))
    skipped = [ds[i] for i in range(len(ds)) if isinstance(ds[i], Skipped)]
    assert [s.path for s in skipped] == [str(tmp_path / "b" / "zz_bad.jpg")]
    same_size = [it for it in (ds[i] for i in range(len(ds))) if not isinstance(it, Skipped) and it[0].shape[1] == 12]
    x, y, names = collate_skipping(same_size + skipped)
    assert x.shape == (4, 3, 12, 10) and y.tolist() == [-1] * 4 and names == [str(skipped[0])]


def test_unlabelled_folder_empty_or_unreadable_is_an_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images") as e:
        UnlabelledImageFolder(tmp_path)
    assert str(tmp_path) in str(e.value) and all(ext in str(e.value) for ext in IMAGE_EXTENSIONS)
    (tmp_path / "sub" / "a.jpg").write_bytes(GARBAGE)
    with pytest.raises(DataError, match="can be opened"):
        UnlabelledImageFolder(tmp_path)
    with pytest.raises(FileNotFoundError):
        UnlabelledImageFolder(tmp_path / "missing")

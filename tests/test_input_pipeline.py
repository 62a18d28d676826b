"""The fast input pipeline: JPEG draft crops, uint8 samples, device-side normalise + erasing, prefetching."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab.data import transforms as T
from vitlab.data.device_prep import BatchPrep, apply_erasing, erase_boxes, normalize_uint8
from vitlab.data.folder import ImageFolder, collate_skipping
from vitlab.data.jpeg import draft_plan, draft_reduction, load_resized_crop
from vitlab.engine.distributed import DistInfo
from vitlab.engine.loaders import PrefetchLoader, train_loader

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ROOT = Path(__file__).resolve().parents[1]


def _smooth(h: int, w: int) -> np.ndarray:
    """A smooth colour image: low-frequency gradients and waves."""
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([0.5 + 0.4 * np.sin(3 * x + 1), 0.5 + 0.4 * np.cos(2 * y), 0.3 + 0.6 * x * y], -1)
    return (img * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def jpeg_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    for c in range(2):
        (root / f"c{c}").mkdir()
        for i in range(2):
            Image.fromarray(_smooth(1000 + 40 * i, 1100 - 40 * i)).save(root / f"c{c}" / f"{i}.jpg", quality=92)
    return root


def test_draft_reduction_never_upsamples():
    for ch, cw in [(224, 224), (447, 2000), (448, 448), (900, 1000), (1792, 1800), (5000, 5000), (100, 900)]:
        s = draft_reduction((ch, cw), (224, 224))
        assert s == 1 or (ch / s >= 224 and cw / s >= 224)   # the reduced crop still covers the output
        assert s == max([1] + [r for r in (2, 4, 8) if ch >= r * 224 and cw >= r * 224])   # the largest such
    assert draft_reduction((5000, 5000), (224, 224), max_reduction=2) == 2
    assert draft_reduction((300, 300), (224, 224)) == 1      # a crop smaller than 2x the output: full size


def test_draft_crop_keeps_the_geometry_and_the_pixels(jpeg_dir):
    path = str(next(jpeg_dir.glob("c0/*.jpg")))
    rrc = T.RandomResizedCrop(224)
    used, diffs = set(), []
    with Image.open(path) as im:
        w, h = im.size
    for seed in range(12):
        a = load_resized_crop(path, rrc, torch.Generator().manual_seed(seed), draft=True)
        b = load_resized_crop(path, rrc, torch.Generator().manual_seed(seed), draft=False)
        ref = rrc.box(h, w, torch.Generator().manual_seed(seed))    # the float pipeline's draws
        assert a.box == b.box == ref
        assert b.reduction == 1 and a.reduction == draft_reduction(a.box[2:], (224, 224))
        # draft never makes the crop region smaller than the output
        assert a.box[2] / a.reduction >= 224 and a.box[3] / a.reduction >= 224
        assert a.image.shape == b.image.shape == (3, 224, 224) and a.image.dtype == torch.uint8
        used.add(a.reduction)
        diffs.append((a.image.float() - b.image.float()).abs().mean().item())
    assert used & {2, 4} and 1 in used, used  # both paths ran
    assert max(diffs) < 1.5, diffs   # levels of 255, on a smooth image


def test_non_jpeg_is_decoded_in_full_with_the_same_box(tmp_path):
    path = tmp_path / "a.png"
    Image.fromarray(_smooth(1000, 1000)).save(path)
    r = load_resized_crop(str(path), T.RandomResizedCrop(224, scale=(0.9, 1.0)), torch.Generator().manual_seed(0))
    assert r.reduction == 1 and r.box == T.RandomResizedCrop(224, scale=(0.9, 1.0)).box(
        1000, 1000, torch.Generator().manual_seed(0))


def test_uint8_pipeline_draws_like_the_float_one(jpeg_dir):
    kw = dict(auto_augment="rand-m9-mstd0.5-inc1", hflip=0.5)
    old = ImageFolder(jpeg_dir, T.build_train_transform(64, MEAN, STD, **kw))
    new = ImageFolder(jpeg_dir, T.build_train_transform(64, MEAN, STD, **kw, output="uint8"))
    assert draft_plan(new.transform) is None and draft_plan(
        T.build_train_transform(64, MEAN, STD, output="uint8", draft=True)) is not None
    for i in range(4):
        (a, _), (b, _) = old[(i, 10 + i)], new[(i, 10 + i)]
        assert b.dtype == torch.uint8
        got = normalize_uint8(b[None], MEAN, STD)[0]
        # same crop, flip and ops: only resize / rounding differences (a few levels) remain
        assert (got - a).abs().mul(torch.tensor(STD).view(3, 1, 1)).mean() < 3 / 255


def test_device_normalise_equals_the_float_path():
    crops = [torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
             for i in range(5)]
    norm = T.Normalize(MEAN, STD)
    old = torch.stack([norm(T.to_tensor(c)) for c in crops])
    x, _, _ = collate_skipping([(c, 0) for c in crops])
    assert x.dtype == torch.uint8
    assert torch.allclose(normalize_uint8(x, MEAN, STD), old, atol=1e-6, rtol=0)
    assert torch.allclose(BatchPrep(mean=MEAN, std=STD)(x, seed=3), old, atol=1e-6, rtol=0)


def test_device_erasing_statistics():
    b, h, w = 4000, 32, 48
    boxes = erase_boxes(b, h, w, prob=0.25, generator=torch.Generator().manual_seed(0))
    hit = boxes[:, 0, 2] > 0
    assert abs(hit.float().mean().item() - 0.25) < 0.03
    top, left, bh, bw = boxes[hit, 0].unbind(-1)
    frac = (bh * bw).double() / (h * w)
    assert frac.min() >= 0.015 and frac.max() <= 1 / 3 + 0.05      # area 0.02..1/3 (up to rounding)
    assert (bh < h).all() and (bw < w).all() and (top >= 0).all() and (left >= 0).all()
    assert (top + bh <= h).all() and (left + bw <= w).all()
    aspect = (bh.double() / bw).log()
    assert aspect.min() > np.log(0.3) - 0.3 and aspect.max() < np.log(3.3) + 0.3
    assert aspect.mean().abs() < 0.15        # log-uniform on a range symmetric about 0


def test_device_erasing_touches_only_the_chosen_images_inside_their_boxes():
    x = torch.zeros(64, 3, 24, 24)
    boxes = erase_boxes(64, 24, 24, prob=0.5, generator=torch.Generator().manual_seed(1))
    out = apply_erasing(x.clone(), boxes, "pixel", generator=torch.Generator().manual_seed(2))
    for i in range(64):
        top, left, bh, bw = boxes[i, 0].tolist()
        changed = out[i] != 0
        if bh == 0:
            assert not changed.any()
        else:
            inside = torch.zeros(24, 24, dtype=torch.bool)
            inside[top:top + bh, left:left + bw] = True
            assert not changed[:, ~inside].any() and changed[:, inside].float().mean() > 0.99
    noise = out[out != 0]
    assert abs(noise.mean().item()) < 0.1 and abs(noise.std().item() - 1) < 0.1   # per-pixel N(0, 1)
    a = BatchPrep(mean=MEAN, std=STD, reprob=0.5)(torch.full((8, 3, 16, 16), 128, dtype=torch.uint8), seed=5)
    b = BatchPrep(mean=MEAN, std=STD, reprob=0.5)(torch.full((8, 3, 16, 16), 128, dtype=torch.uint8), seed=5)
    assert torch.equal(a, b)      # a function of (batch, seed)


def test_prefetch_loader_yields_the_plain_batches(jpeg_dir):
    ds = ImageFolder(jpeg_dir, T.build_train_transform(32, MEAN, STD, output="uint8", draft=True))
    prep = BatchPrep(mean=MEAN, std=STD, reprob=0.25)
    plain, sampler = train_loader(ds, batch_size=2, accum_steps=1, workers=0, seed=0, dist=DistInfo())
    sampler.set_epoch(0)
    want = [(prep(x, i), y) for i, (x, y, _) in enumerate(plain)]
    sampler.set_epoch(0)
    wrapped = PrefetchLoader(plain, "cpu", prepare=lambda b, i: (prep(b[0], i), *b[1:]))
    got = [(x, y) for x, y, _ in wrapped]
    assert len(wrapped) == len(plain) == 2 and len(got) == len(want) == 2
    for (xa, ya), (xb, yb) in zip(want, got):
        assert xb.dtype == torch.float32 and torch.equal(xa, xb) and torch.equal(ya, yb)


def test_benchmark_runs_in_tiny_mode(tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import input_pipeline
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    out = tmp_path / "table.md"
    input_pipeline.main(["--images", "6", "--iters", "1", "--batch-size", "3", "--loader-images", "0",
                         "--folder", str(tmp_path / "imgs"), "--out", str(out)])
    table = out.read_text()
    assert "| images/s |" in table and "workers to feed 1500 img/s" in table and "assumption" in table
    assert "decode draft" in table and "random erasing" in table and table == capsys.readouterr().out
    assert len(list((tmp_path / "imgs").rglob("*.jpg"))) == 6

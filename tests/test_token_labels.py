"""Token labeling on real image folders: generate (official layout), lazy reader, crop/flip warping, mixing."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.cli.main import main
from vitlab.data.folder import ImageFolder, load_image
from vitlab.data.mixup import Mixup, mix_maps
from vitlab.data.token_labels import (TokenLabelFolderDataset, dense_logits, label_file, warp_token_labels)
from vitlab.data.transforms import build_train_transform, resize
from vitlab.errors import DataError

CLASSES = ("ant", "bee", "cat")


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """A 3-class folder of odd-sized images, a volo_micro teacher folder and its generated labels."""
    tmp = tmp_path_factory.mktemp("tl")
    rng = np.random.default_rng(0)
    for c in CLASSES:
        (tmp / "data" / c).mkdir(parents=True)
        for i in range(3):
            arr = rng.integers(0, 255, (20 + 6 * i, 28 + 3 * i, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp / "data" / c / f"img{i}.png")
    torch.manual_seed(0)
    teacher = vitlab.create_model("volo_micro", num_classes=3, img_size=32, patch_size=4)
    teacher.save_pretrained(tmp / "teacher")
    argv = ["token-labels", "generate", "--teacher", str(tmp / "teacher"), "--data", str(tmp / "data"),
            "-o", str(tmp / "labels"), "--topk", "2", "--batch-size", "4", "--threads", "2"]
    assert main(argv) == 0
    return tmp, teacher.eval(), argv


def test_generate_writes_the_official_layout_and_resumes(labelled, capsys):
    tmp, teacher, argv = labelled
    files = sorted((tmp / "labels").rglob("*.pt"))
    assert [f.relative_to(tmp / "labels").as_posix() for f in files] == \
        [f"{c}/img{i}.pt" for c in CLASSES for i in range(3)]
    path = tmp / "data" / "bee" / "img2.png"
    rec = torch.load(label_file(tmp / "labels", path), weights_only=True)
    assert rec.shape == (2, 2, 4, 4) and rec.dtype == torch.float16      # (2, k, h, w): scores, indices
    # the teacher's aux logits on the whole image resized to its input, top-2 per location
    cfg = teacher.pretrained_cfg
    img = resize(torch.from_numpy(load_image(str(path))).permute(2, 0, 1).float() / 255, (32, 32), "bicubic")
    x = ((img - torch.tensor(cfg["mean"]).view(3, 1, 1)) / torch.tensor(cfg["std"]).view(3, 1, 1))[None]
    with torch.no_grad():
        aux = teacher.forward_train(x).aux_logits.transpose(1, 2).reshape(1, 3, 4, 4)
    values, indices = aux.topk(2, dim=1)
    assert torch.equal(rec[1].long(), indices[0])
    torch.testing.assert_close(rec[0].float(), values[0], atol=2e-3, rtol=2e-3)
    meta = json.loads((tmp / "labels" / "token_labels.json").read_text())
    assert meta["num_classes"] == 3 and meta["classes"] == list(CLASSES) and meta["topk"] == 2
    capsys.readouterr()
    assert main(argv) == 0                                                # resumable: nothing left to do
    assert "9 already labelled, 0 to do" in capsys.readouterr().out


def _slow_roi_align(feat, box, out_hw):
    """torchvision roi_align (aligned=False, adaptive sampling) by loops, for one (C, H, W) map."""
    c, h, w = feat.shape
    x1, y1, x2, y2 = box
    rw, rh = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    bh, bw = rh / out_hw[0], rw / out_hw[1]
    gy, gx = math.ceil(rh / out_hw[0]), math.ceil(rw / out_hw[1])
    out = torch.zeros(c, *out_hw, dtype=torch.float64)

    def read(y, x):
        if y < -1 or y > h or x < -1 or x > w:
            return torch.zeros(c, dtype=torch.float64)
        y, x = max(y, 0.0), max(x, 0.0)
        y0, x0 = int(y), int(x)
        if y0 >= h - 1:
            y0 = y1_ = h - 1
            y = float(y0)
        else:
            y1_ = y0 + 1
        if x0 >= w - 1:
            x0 = x1_ = w - 1
            x = float(x0)
        else:
            x1_ = x0 + 1
        ly, lx = y - y0, x - x0
        f = feat.double()
        return ((1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1_] +
                ly * (1 - lx) * f[:, y1_, x0] + ly * lx * f[:, y1_, x1_])

    for ph in range(out_hw[0]):
        for pw in range(out_hw[1]):
            acc = torch.zeros(c, dtype=torch.float64)
            for iy in range(gy):
                for ix in range(gx):
                    acc += read(y1 + ph * bh + (iy + 0.5) * bh / gy, x1 + pw * bw + (ix + 0.5) * bw / gx)
            out[:, ph, pw] = acc / (gy * gx)
    return out.float()


def test_lazy_sample_is_warped_with_its_own_crop_and_flip(labelled):
    tmp = labelled[0]
    t = build_train_transform(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), scale=(0.1, 0.6), hflip=0.5,
                              interpolation="bilinear")
    ds = TokenLabelFolderDataset(ImageFolder(tmp / "data", t), tmp / "labels", 3, list(CLASSES))
    flips = set()
    for seed in range(6):
        idx = seed % len(ds)
        (img, (rec, geom)), y = ds[(idx, seed)]
        path = ds.base.samples[idx][0]
        raw = torch.from_numpy(load_image(path)).permute(2, 0, 1).float() / 255
        H, W = raw.shape[-2:]
        x1, y1, x2, y2, flipped = geom.tolist()
        l, tp, r, b = round(x1 * W), round(y1 * H), round(x2 * W), round(y2 * H)
        expect = resize(raw[:, tp:b, l:r], (32, 32), "bilinear")
        expect = expect.flip(-1) if flipped else expect
        torch.testing.assert_close(img, (expect - 0.5) / 0.25)             # the geometry is the image's own
        flips.add(flipped)
        # the target: dense map (top-k logits, other classes 0), RoIAlign of the crop onto the 3x3 grid,
        # softmax over classes, flip after
        dense = torch.zeros(3, 4, 4).scatter_(0, rec[1].long(), rec[0])
        ref = _slow_roi_align(dense, (x1 * 4 - 0.5, y1 * 4 - 0.5, x2 * 4 - 0.5, y2 * 4 - 0.5), (3, 3)).softmax(0)
        ref = ref.flip(-1) if flipped else ref
        got = warp_token_labels(rec[None], geom[None], 3, 3)[0]
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(dense_logits(rec[None], 3)[0], dense)
    assert flips == {0.0, 1.0}
    smooth = warp_token_labels(rec[None], geom[None], 3, 3, smoothing=0.3)[0]
    torch.testing.assert_close(smooth, got * 0.7 + 0.1)
    torch.testing.assert_close(smooth.sum(0), torch.ones(3, 3))


@pytest.mark.parametrize("mode", ["mixup", "cutmix"])
def test_maps_mix_with_the_images_lambda_and_box(mode):
    b, size, grid = 4, 32, 8
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, size, size).contiguous()
    maps = torch.nn.functional.one_hot(torch.arange(b), b).float().view(b, b, 1, 1).expand(b, b, grid, grid)
    mix = Mixup(b, mixup_alpha=1.0 if mode == "mixup" else 0.0, cutmix_alpha=1.0 if mode == "cutmix" else 0.0,
                smoothing=0.0)
    for seed in range(5):
        xm, y, lam, box = mix.mix(x, torch.arange(b), np.random.default_rng(seed))
        assert (box is None) == (mode == "mixup")
        mixed = mix_maps(maps, lam, box, (size, size))
        # each token's share of the partner, read from the mixed image pooled onto the token grid
        pooled = torch.nn.functional.avg_pool2d(xm[:, :1], size // grid)[:, 0]
        own, partner = torch.arange(b).float().view(b, 1, 1), torch.arange(b).flip(0).float().view(b, 1, 1)
        share = (pooled - own) / (partner - own)
        torch.testing.assert_close(mixed[torch.arange(b), torch.arange(b).flip(0)], share, atol=1e-5, rtol=0)
        torch.testing.assert_close(mixed.mean((2, 3)), y, atol=1e-5, rtol=0)   # the image-level target too


def test_mix_token_targets_swapped_in_the_box_equal_unmixed_predictions():
    """The official loss keeps per-image targets because the model un-swaps its aux tokens; that equals
    the mixed predictions against targets swapped inside the MixToken box."""
    from vitlab.engine.losses import classification_loss, soft_cross_entropy
    torch.manual_seed(0)
    m = vitlab.create_model("volo_micro", num_classes=3, img_size=32, patch_size=4, mix_token=True).train()
    out = m.forward_train(torch.randn(4, 3, 32, 32))
    y1, x1, y2, x2 = out.mix_box
    maps = torch.rand(4, 3, 4, 4).softmax(1)
    target = torch.eye(3)[torch.tensor([0, 1, 2, 0])]
    loss = classification_loss(out, target, 0.5, token_maps=maps)
    aux = out.aux_logits.reshape(4, 4, 4, 3)
    mixed = aux.clone()
    mixed[:, y1:y2, x1:x2] = aux.flip(0)[:, y1:y2, x1:x2]
    swapped = maps.clone()
    swapped[..., y1:y2, x1:x2] = maps.flip(0)[..., y1:y2, x1:x2]
    lam = 1 - (y2 - y1) * (x2 - x1) / 16
    ref = soft_cross_entropy(out.logits, target * lam + target.flip(0) * (1 - lam)) + \
        0.5 * soft_cross_entropy(mixed.reshape(4, 16, 3), swapped.flatten(2).transpose(1, 2))
    torch.testing.assert_close(loss, ref)


def test_train_with_random_crops_flips_and_mixes_runs(labelled, tmp_path, capsys):
    tmp = labelled[0]
    argv = ["train", "--model", "volo_micro", "--data", f"folder:{tmp / 'data'}", "--img-size", "32",
            "--batch-size", "4", "--max-steps", "2", "--threads", "2", "-o", str(tmp_path / "run"),
            "--set", "model.kwargs.patch_size=4", "--set", f"aug.token_labels={tmp / 'labels'}",
            "--set", "aug.scale=[0.08,1.0]", "--set", "aug.hflip=0.5", "--set", "aug.mixup=0.8",
            "--set", "aug.cutmix=1.0", "--set", "aug.mix_token=true", "--set", "data.workers=0"]
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["train_loss"] for r in records if r.get("kind") == "epoch"]
    assert losses and all(np.isfinite(losses))
    # refusals, one line each: an image without its file; labels over another class count
    broken = tmp_path / "broken"
    shutil.copytree(tmp / "labels", broken)
    (broken / "cat" / "img1.pt").unlink()
    capsys.readouterr()
    bad = [a.replace(str(tmp / "labels"), str(broken)) for a in argv]
    assert main(bad[:-6] + ["-o", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "1 of" in err and "cat/img1.png" in err and "cat/img1.pt" in err
    meta = json.loads((tmp / "labels" / "token_labels.json").read_text())
    (broken / "cat" / "img1.pt").write_bytes((tmp / "labels" / "cat" / "img1.pt").read_bytes())
    (broken / "token_labels.json").write_text(json.dumps({**meta, "num_classes": 1000}))
    t = build_train_transform(32, (0.5,) * 3, (0.25,) * 3)
    with pytest.raises(DataError, match="over 1000 classes .* but the dataset has 3"):
        TokenLabelFolderDataset(ImageFolder(tmp / "data", t), broken, 3)
    (broken / "token_labels.json").unlink()
    torch.save(torch.tensor([[[[7.0]]], [[[5.0]]]]).half(), broken / "cat" / "img1.pt")   # an index-5 class
    ds = TokenLabelFolderDataset(ImageFolder(tmp / "data", t), broken, 3)
    with pytest.raises(DataError, match="names class 5 but the dataset has 3 classes"):
        ds[(7, 0)]

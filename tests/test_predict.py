"""``vitlab predict``: top-k of images (run folder, model folder, name + checkpoint) as a table, JSON and CSV;
segmentation masks + overlays; per-clip rows of a video model; unreadable inputs skipped and named; refusals."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.cli.main import main

# 2 steps of volo_micro on 16 px digits (1 channel): a real run folder with model/ and config.yaml
TRAIN = ["train", "--model", "volo_micro", "--data", "digits", "--img-size", "16", "--batch-size", "8",
         "--epochs", "1", "--max-steps", "2", "--threads", "1", "--workers", "0", "--device", "cpu",
         "--progress", "log", "--set", "model.kwargs.patch_size=4", "--set", "model.kwargs.in_chans=1",
         "--set", "data.options.train_limit=16", "--set", "data.options.held_out=8"]


def _images(folder, sizes=((40, 30), (24, 36), (32, 32))):
    rng = np.random.default_rng(0)
    (folder / "sub").mkdir(parents=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        path = folder / ("sub" if i == len(sizes) - 1 else "") / f"im{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    (folder / "broken.png").write_bytes(b"this is not a png")
    return paths


def _json(capsys, argv):
    assert main(argv) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def test_run_folder_topk_table_json_csv_agree_and_a_corrupt_file_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(TRAIN + ["-o", str(run)]) == 0
    names = json.loads((run / "model" / "config.json").read_text())["label_names"]
    assert len(names) == 10
    capsys.readouterr()
    imgs = tmp_path / "imgs"
    _images(imgs)
    res, err = _json(capsys, ["predict", str(run), str(imgs), "--json", "--topk", "3", "--csv", str(tmp_path / "p.csv"),
                              "--threads", "1"])
    assert res["task"] == "classification" and res["count"] == 3
    assert [p["file"] for p in res["predictions"]] == [str(imgs / "im0.png"), str(imgs / "im1.png"),
                                                        str(imgs / "sub" / "im2.png")]   # recursive, sorted
    for p in res["predictions"]:
        probs = [t["probability"] for t in p["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(t["class"] == names[t["index"]] for t in p["top"])
    assert res["skipped"][0]["file"] == str(imgs / "broken.png")
    assert f"skipped {imgs / 'broken.png'}" in err
    rows = list(csv.DictReader((tmp_path / "p.csv").open()))
    assert len(rows) == 9
    for row in rows:
        top = next(p for p in res["predictions"] if p["file"] == row["file"])["top"][int(row["rank"]) - 1]
        assert row["class"] == top["class"] and int(row["index"]) == top["index"]
        assert float(row["probability"]) == pytest.approx(top["probability"], abs=1e-6)
    # every class: the probabilities sum to one; the table names the classes
    res, _ = _json(capsys, ["predict", str(run / "model"), str(imgs / "im0.png"), "--json", "--topk", "50"])
    assert sum(t["probability"] for t in res["predictions"][0]["top"]) == pytest.approx(1.0, abs=1e-5)
    assert main(["predict", str(run), str(imgs / "im0.png"), "--topk", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["file", "rank", "class", "probability"] and len(table) == 3
    assert table[1].split()[2] == res["predictions"][0]["top"][0]["class"]


def test_model_folder_names_preprocessing_and_a_name_with_checkpoint_gives_indices(tmp_path, capsys, monkeypatch):
    torch.manual_seed(0)
    model = vitlab.create_model("volo_micro", num_classes=3, img_size=32)
    model.save_pretrained(tmp_path / "m", label_names=["cat", "dog", "bird"])
    imgs = tmp_path / "imgs"
    _images(imgs)
    seen = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, x: seen.append(tuple(x.shape)) or forward(self, x))
    res, _ = _json(capsys, ["predict", str(tmp_path / "m"), str(imgs / "im0.png"), str(imgs / "im1.png"), "--json",
                            "--batch-size", "1"])
    assert seen == [(1, 3, 32, 32)] * 2      # the folder's input size, one image per batch
    assert {t["class"] for p in res["predictions"] for t in p["top"]} == {"cat", "dog", "bird"}
    plain = vitlab.create_model("volo_micro")     # a registered name: weights from --checkpoint, no class names
    torch.save(plain.state_dict(), tmp_path / "w.pth")
    res, _ = _json(capsys, ["predict", "volo_micro", str(imgs / "im0.png"), "--json", "--topk", "2",
                            "--checkpoint", str(tmp_path / "w.pth")])
    assert all(t["class"] == str(t["index"]) for t in res["predictions"][0]["top"])


def test_segmentation_writes_masks_and_overlays_of_the_image_size_and_refuses_a_taken_folder(tmp_path, capsys):
    torch.manual_seed(0)
    names = ["sky", "grass", "road", "tree"]
    vitlab.create_model("segvit_micro", num_classes=4).save_pretrained(tmp_path / "seg", label_names=names)
    imgs = tmp_path / "imgs"
    paths = _images(imgs)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "seg"), str(imgs)]) == 2         # no -o: one line
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vitlab predict: error: {tmp_path / 'seg'} is a segmentation model: give -o DIR for its masks and "
                   f"overlays"]
    res, err = _json(capsys, ["predict", str(tmp_path / "seg"), str(imgs), "-o", str(out), "--json"])
    assert res["task"] == "segmentation" and res["count"] == 3 and "broken.png" in err
    for path, name in zip(paths, ["im0", "im1", "sub/im2"]):
        with Image.open(path) as im:
            size = im.size
        with Image.open(out / "masks" / f"{name}.png") as mask:
            assert mask.size == size and mask.mode == "L"
            assert np.asarray(mask).max() < len(names)
        with Image.open(out / "overlays" / f"{name}.png") as overlay:
            assert overlay.format == "PNG" and overlay.size[0] > 2 * overlay.size[1] * 0.9   # image | prediction
    row = res["predictions"][0]
    assert sum(c["fraction"] for c in row["classes"]) == pytest.approx(1.0)
    assert all(c["class"] == names[c["index"]] for c in row["classes"])
    assert json.loads((out / "predictions.json").read_text())["count"] == 3
    assert main(["predict", str(tmp_path / "seg"), str(paths[0]), "-o", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "seg"), str(paths[0]), "-o", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["im0.png"]


def test_video_model_gives_a_row_per_clip_and_their_mean(tmp_path, capsys):
    from vitlab.data.synthetic_video import render_video, write_video
    torch.manual_seed(0)
    names = ["a", "b", "c"]
    vitlab.create_model("uniformer_video_micro", num_classes=3, img_size=32).save_pretrained(tmp_path / "vid",
                                                                                           label_names=names)
    write_video(tmp_path / "clip.mp4", render_video(1, np.random.default_rng(0), frames=40, size=40))
    (tmp_path / "bad.mp4").write_bytes(b"no video here")
    res, err = _json(capsys, ["predict", str(tmp_path / "vid"), str(tmp_path / "clip.mp4"), str(tmp_path / "bad.mp4"),
                              "--json", "--topk", "3", "--clips", "2"])
    assert res["task"] == "video" and "skipped" in err and str(tmp_path / "bad.mp4") in err
    row = res["predictions"][0]
    assert row["frames"] == 40 and [c["clip"] for c in row["clips"]] == [0, 1]
    assert row["clips"][0]["frames"][0] < row["clips"][1]["frames"][0]       # two different stretches of the video
    for cls in range(3):
        per_clip = [next(t["probability"] for t in c["top"] if t["index"] == cls) for c in row["clips"]]
        mean = next(t["probability"] for t in row["top"] if t["index"] == cls)
        assert mean == pytest.approx(sum(per_clip) / 2, abs=1e-6)
    assert main(["predict", str(tmp_path / "vid"), str(tmp_path / "clip.mp4"), "--topk", "1", "--clips", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["file", "clip", "rank", "class", "probability"]
    assert [line.split()[-4] for line in table[1:]] == ["mean", "0", "1"]


def test_refusals_are_one_line_with_exit_2(tmp_path, capsys):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(img)
    for argv, expected in ((["predict", "volo_nope", str(img)], "unknown model name 'volo_nope'"),
                           (["predict", "volo_micro", str(tmp_path / "missing.png")], "does not exist"),
                           (["predict", "volo_micro", str(img), "--topk", "0"], "--topk must be at least 1")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("vitlab predict: error: ") and expected in err[0], err
    (tmp_path / "bad.png").write_bytes(b"x")
    assert main(["predict", "volo_micro", str(tmp_path / "bad.png")]) == 2
    assert "none of the 1 inputs could be read" in capsys.readouterr().err

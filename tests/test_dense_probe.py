"""The dense frozen-feature probe (mIoU) and the region-level evaluator commands."""
import json

import numpy as np
import pytest
import torch

from vitlab.cli.main import main
from vitlab.data.synthetic_scenes import dominant_class, read_split_arrays, write_texture_scenes
from vitlab.ssl.dense_probe import PixelTokens, scene_tensors, train_dense_probe


def _maps_and_labels(n, informative, seed):
    """(n, 8, 4, 4) maps and (n, 16, 16) labels; the class of each 4x4 cell is written into the maps or not."""
    g = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, 3, (n, 4, 4), generator=g)
    labels = cells.repeat_interleave(4, 1).repeat_interleave(4, 2)
    maps = torch.randn(n, 8, 4, 4, generator=g)
    if informative:
        maps[:, :3] += 4 * torch.nn.functional.one_hot(cells, 3).permute(0, 3, 1, 2)
    return maps, labels


def test_probe_reads_classes_written_into_the_maps_and_not_noise():
    good = train_dense_probe(*_maps_and_labels(64, True, 0), *_maps_and_labels(32, True, 1), 3, epochs=100,
                             train_size=None)
    noise = train_dense_probe(*_maps_and_labels(64, False, 0), *_maps_and_labels(32, False, 1), 3, epochs=100,
                              train_size=None)
    assert good["mIoU"] > 75 and noise["mIoU"] < 45      # bilinear upsampling blurs the 4x4 cell borders
    assert set(good["per_class"]) == {"0", "1", "2"}


def test_probe_refuses_maps_without_labels():
    maps, labels = _maps_and_labels(4, True, 0)
    with pytest.raises(ValueError, match="differ in number"):
        train_dense_probe(maps, labels[:3], maps, labels, 3, epochs=1)


def test_pixel_tokens_are_the_patches():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    out = PixelTokens(4).forward_features(x)
    assert out.shape == (2, 48, 2, 2)
    torch.testing.assert_close(out[1, :16, 0, 1], x[1, 0, :4, 4:].reshape(-1))


def test_scene_arrays_labels_and_dominant_class(tmp_path):
    root = write_texture_scenes(tmp_path / "scenes", num_train=3, num_val=2, size=32, seed=1)
    images, labels = read_split_arrays(root, "validation")
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (2, 32, 32)
    assert labels.max() == 255 and labels[labels != 255].max() < 8          # borders ignored, classes 0-7
    major = dominant_class(labels, 8)
    for lab, c in zip(labels, major):
        assert (lab == c).sum() == max((lab == k).sum() for k in range(8))
    x, y = scene_tensors(images, labels, 16, (0.5,) * 3, (0.25,) * 3)
    assert x.shape == (2, 3, 16, 16) and y.dtype == torch.int64


def test_commands_score_a_model_and_its_baselines(tmp_path, capsys):
    root = write_texture_scenes(tmp_path / "scenes", num_train=6, num_val=4, size=32, seed=0)
    common = ["--model", "swin_micro", "--img-size", "32", "--threads", "1", "--json", "--baselines"]
    assert main(["dense-probe", "--data", f"texture-scenes:{root}", "--epochs", "2", *common]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["features"].split(" ")[0] for r in rows] == ["random", "swin_micro", "raw"]
    assert all(0 <= r["mIoU"] <= 100 and r["grid"] == "2x2" for r in rows)
    assert main(["correspondence", "--data", f"texture-scenes:{root}", "--pairs", "4", *common]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and all(r["pairs"] == 4 and r["chance"] == pytest.approx(25.0) for r in rows)


def test_dense_probe_refuses_sets_without_masks(capsys):
    assert main(["dense-probe", "--model", "swin_micro", "--data", "digits"]) == 2
    assert "texture-scenes" in capsys.readouterr().err

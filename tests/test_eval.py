"""``vitlab eval``: run folders, model folders, names + checkpoints, JSON output, class-count errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from vitlab.cli.main import main as vitlab_main
from test_train_utils import micro_config, train

MICRO = ["--set", "model.kwargs.img_size=16", "--set", "model.kwargs.patch_size=4", "--set", "model.kwargs.in_chans=1",
         "--set", "data.options.held_out=200", "--set", "aug.crop_pct=1.0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun") / "run"
    train(micro_config(out, sched={"epochs": 1, "max_steps": 8}))
    return out


def _json(capsys, argv):
    capsys.readouterr()
    assert vitlab_main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_eval_a_run_folder_a_model_folder_and_a_checkpoint_agree(run_dir, capsys):
    final = json.loads((run_dir / "final.json").read_text())
    by_run = _json(capsys, ["eval", "--model", str(run_dir), "--json"])
    by_folder = _json(capsys, ["eval", "--model", str(run_dir / "model"), "--data", "digits", "--json"] + MICRO[6:])
    by_name = _json(capsys, ["eval", "--model", "volo_micro", "--checkpoint", str(run_dir / "last.pth"),
                             "--data", "digits", "--json"] + MICRO)
    for res in (by_run, by_folder, by_name):
        assert res["count"] == 200 and res["top1"] == pytest.approx(final["top1"])
        assert res["top5"] >= res["top1"] and res["images_per_s"] > 0
        cm = np.array(res["confusion"])
        assert cm.shape == (10, 10) and cm.sum() == 200
        assert np.trace(cm) / 2 == pytest.approx(res["top1"])
        per_class = np.diag(cm) / cm.sum(1) * 100
        assert res["per_class"] == pytest.approx(per_class.tolist(), abs=1e-3)


def test_eval_text_output_and_plot(run_dir, capsys, tmp_path):
    capsys.readouterr()
    assert vitlab_main(["eval", "--model", str(run_dir), "--output", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "top-1" in text and "per-class accuracy" in text and "confusion matrix" in text
    assert (tmp_path / "eval.json").is_file() and (tmp_path / "confusion.png").stat().st_size > 1000


def test_checkpoint_for_another_class_count_is_a_clear_error(run_dir, tmp_path, capsys):
    import torch
    state = torch.load(run_dir / "last.pth", weights_only=True)["model"]
    state = {k: (v[:4] if k.split(".")[0] in ("head", "aux_head") else v) for k, v in state.items()}
    torch.save(state, tmp_path / "four.pth")
    assert vitlab_main(["eval", "--model", "volo_micro", "--checkpoint", str(tmp_path / "four.pth"),
                        "--data", "digits"] + MICRO) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlab eval: error: checkpoint") and len(err.strip().splitlines()) == 1
    assert "classifier for 4 classes but dataset 'digits' has 10 classes" in err


def test_eval_output_folder_is_not_overwritten_by_accident(run_dir, tmp_path, capsys):
    out = tmp_path / "report"
    assert vitlab_main(["eval", "--model", str(run_dir), "--output", str(out)]) == 0
    before = (out / "eval.json").read_bytes()
    assert vitlab_main(["eval", "--model", str(run_dir), "--output", str(out)]) == 2
    assert "already holds files" in capsys.readouterr().err and (out / "eval.json").read_bytes() == before
    assert vitlab_main(["eval", "--model", str(run_dir), "--output", str(out), "--overwrite"]) == 0
    text = (out / "eval.json").read_text()
    assert "NaN" not in text and json.loads(text)["count"] == 200


def test_eval_of_a_named_folder_scores_every_image(tmp_path, capsys):
    """--data PATH without a train/val split used to score a seeded 10 % of the folder."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "imgs" / name / f"{i}.png")
    res = _json(capsys, ["eval", "--model", "volo_micro", "--data", str(tmp_path / "imgs"), "--json",
                         "--set", "model.kwargs.img_size=16", "--set", "model.kwargs.patch_size=4"])
    assert res["count"] == 20 and res["source"].startswith("all of")


def test_unknown_model_and_missing_folder_are_one_line_errors(capsys):
    assert vitlab_main(["eval", "--model", "volo_d9"]) == 2
    assert "unknown model name 'volo_d9'" in capsys.readouterr().err
    assert vitlab_main(["eval", "--model", "./no/such/run"]) == 2
    assert "does not exist" in capsys.readouterr().err

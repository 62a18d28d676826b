"""The EsViT region-loss study script: its table and budget figure from cached evaluator output."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "esvit_region_loss.py"


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("esvit_region_loss", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder: Path, steps: int, score: float, baselines: bool, pairs: int = 400) -> None:
    """A finished run whose three evaluators' JSON is already cached (rows: run, random init, raw pixels)."""
    (folder / "eval").mkdir(parents=True)
    (folder / "final.json").write_text(json.dumps({"step": steps, "minutes": 1.5}))
    n = 3 if baselines else 1
    names = ["run", "random", "pixels"][:n]
    suffix = "_baselines" if baselines else ""
    knn = [{"features": f, "top1": score - 10 * i} for i, f in enumerate(names)]
    if baselines:
        knn.append({"features": "raw pixels (mean-centred)", "top1": 99.0})
    dense = [{"mIoU": score - i} for i in range(n)]
    corr = [{"exact": score / 4 - i, "within_one": 50.0, "distance_px": 30.0, "same_region": 70.0 + i,
             "label_oracle": 13.0, "chance": 4.0, "grid": "5x5", "pairs": pairs} for i in range(n)]
    for key, rows in (("knn", knn), ("dense", dense), ("corr", corr)):
        (folder / "eval" / f"{key}{suffix}.json").write_text(json.dumps(rows))


def test_table_is_the_seed_mean_with_the_spread(study, tmp_path):
    fake_run(tmp_path / "v_s0", 360, 40.0, baselines=True)
    fake_run(tmp_path / "v_s1", 360, 42.0, baselines=False)
    fake_run(tmp_path / "vr_s0", 360, 44.0, baselines=False)
    text = study.table(tmp_path, ["view", "view+region"], [0, 1], threads=1, pairs=400)
    rows = text.splitlines()
    assert rows[2].startswith("| L_V (DINO), 2 seeds | 41.00 ± 1.00 | 41.00 ± 1.00 | 10.25 ± 0.25 |")
    assert rows[3].startswith("| L_V + L_R (EsViT), 1 seed | 44.00 | 44.00 | 11.00 |")
    assert rows[4].startswith("| L_R's gain, paired by seed (1 seed) | 4.00 | 4.00 | 1.00 |")     # seed 0 only
    assert "| random initialisation | 30.00 | 39.00 | 9.00 |" in text       # the mean-centred k-NN row is skipped
    assert "matching by texture alone: 13.00%" in text


def test_budget_figure_reads_every_folder(study, tmp_path):
    for folder, steps in (("a", 360), ("b", 1080)):
        fake_run(tmp_path / folder / "v_s0", steps, 40.0, baselines=True)
        fake_run(tmp_path / folder / "vr_s0", steps, 45.0, baselines=False)
    out = tmp_path / "fig" / "budget.png"
    study.budget_figure([tmp_path / "a", tmp_path / "b"], ["view", "view+region"], [0], 1, 400, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_correspondence_scored_with_other_pairs_is_rerun(study, tmp_path):
    fake_run(tmp_path / "v_s0", 360, 40.0, baselines=True, pairs=100)
    with pytest.raises(SystemExit, match="correspondence --data texture-scenes --pairs 400 --model"):
        study.evaluate(tmp_path / "v_s0", baselines=True, threads=1, pairs=400)
    assert study.evaluate(tmp_path / "v_s0", baselines=False, threads=1, pairs=100)["corr"][0]["pairs"] == 100


def test_gains_table_has_a_row_per_study(study, tmp_path):
    for folder, steps, lift in (("short", 360, 1.0), ("long", 1080, 3.0)):
        fake_run(tmp_path / folder / "v_s0", steps, 40.0, baselines=True)
        fake_run(tmp_path / folder / "vr_s0", steps, 40.0 + lift, baselines=False)
    rows = study.gains_table([tmp_path / "short", tmp_path / "long"], [0, 1], 1, 400).splitlines()
    assert rows[2].startswith("| short | 360 | 1 | 1.00 | 1.00 | 0.25 |")
    assert rows[3].startswith("| long | 1,080 | 1 | 3.00 | 3.00 | 0.75 |")

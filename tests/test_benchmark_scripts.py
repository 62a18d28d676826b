"""benchmarks/gpu_suite.py and benchmarks/scaling.py: the whole script path on CPU, the fits, the crossings."""
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import ``benchmarks/<name>.py`` as a module (the folder is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def table_rows(text: str) -> dict[str, list[str]]:
    """check -> its cells, for every data row of the markdown table (header and rule skipped)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 8 and cells[0] not in ("section", "---"):
            rows[cells[1]] = cells
    return rows


def run_suite(tmp_path, *flags):
    suite = load_script("gpu_suite")
    out = tmp_path / "gpu.md"
    code = suite.main(["--smoke", "--device", "cpu", "--threads", "1", "--out", str(out), *flags])
    return code, out.read_text()


def test_gpu_suite_smoke_on_cpu(tmp_path, restore_threads):
    code, text = run_suite(tmp_path, "--no-compile", "--models", "volo_d1", "--iters", "1", "--kernel-batch", "1")
    rows = table_rows(text)
    assert code == 0, text
    assert "torch " in text.splitlines()[1] and "triton" in text.splitlines()[1]  # environment above the table
    cpu_checks = ["outlook output: fold-free torch vs unfold/fold reference (fp32, cpu)",
                  "outlook grad of v: fold-free torch vs unfold/fold reference (fp32, cpu)",
                  "outlook grad of attn: fold-free torch vs unfold/fold reference (fp32, cpu)",
                  "volo_micro: output, SDPA path vs reference (fp32, cpu)",
                  "volo_micro: input gradient, SDPA path vs reference (fp32, cpu)",
                  "volo_micro: bf16 autocast error vs fp32 reference (<= 2x reference path's)",
                  "volo_micro: bf16 autocast train step (CE, backward, AdamW) finite"]
    for check in cpu_checks:
        assert rows[check][-1] == "PASS", rows[check]
    for check in cpu_checks[:-1]:  # a real number under its tolerance
        assert float(rows[check][2]) <= float(rows[check][3])
    cuda_only = [c for c in rows if "Triton" in c or "CUDA vs CPU" in c]
    assert len(cuda_only) == 2 + 6 + 1
    assert all(rows[c][-1].startswith("SKIP (") for c in cuda_only)
    for mode in ("infer", "train"):
        for path in ("vitlab", "reference"):
            row = rows[f"volo_micro · {mode} · eager · b2@64 · {path}"]
            assert row[-1] == "OK" and float(row[4]) > 0 and float(row[5]) >= 0
        assert rows[f"volo_micro · {mode} · eager · b2@64 · vitlab"][6].startswith("speed x")
    assert rows["volo_micro · timm"][-1].startswith("SKIP")
    assert rows["torch.compile rows"][-1] == "SKIP (--no-compile)"
    assert not [c for c, r in rows.items() if r[-1].startswith("FAIL")]


def test_gpu_suite_failure_is_a_row_not_a_crash(tmp_path, restore_threads):
    code, text = run_suite(tmp_path, "--no-compile", "--models", "no_such_model", "--kernel-batch", "1")
    rows = table_rows(text)
    assert code == 1
    failed = {c: r[-1] for c, r in rows.items() if r[-1].startswith("FAIL")}
    assert "no_such_model: output, SDPA path vs reference (fp32, cpu)" in failed
    assert "no_such_model: build" in failed
    assert all("\n" not in reason and "no_such_model" in reason for reason in failed.values())
    assert rows["outlook output: fold-free torch vs unfold/fold reference (fp32, cpu)"][-1] == "PASS"  # kept going


def test_gpu_suite_budget_skips_and_says_so(tmp_path, restore_threads):
    code, text = run_suite(tmp_path, "--no-compile", "--models", "vit_base_patch16", "--budget-s", "0")
    rows = table_rows(text)
    assert code == 0
    budget = [c for c, r in rows.items() if "budget" in r[-1]]
    assert "vit_micro: output, SDPA path vs reference (fp32, cpu)" in budget
    assert "vit_micro · train · eager · b2@64 · vitlab" in budget
    assert not [c for c, r in rows.items() if r[-1] in ("PASS", "OK")]


@pytest.mark.slow
def test_gpu_suite_smoke_all_families_with_compile(tmp_path, restore_threads):
    code, text = run_suite(tmp_path, "--budget-s", "600")
    rows = table_rows(text)
    assert code == 0, text
    for name in ("volo", "pale", "uniformer", "swin", "vit", "segvit"):
        assert rows[f"{name}_micro: output, SDPA path vs reference (fp32, cpu)"][-1] == "PASS"
        assert rows[f"{name}_micro: bf16 autocast train step (CE, backward, AdamW) finite"][-1] == "PASS"
    compiled = [r for c, r in rows.items() if "compile(eager)" in c]
    assert compiled and all(r[-1] in ("OK",) or "budget" in r[-1] for r in compiled)
    assert any(r[-1] == "OK" for r in compiled)


# --- scaling -------------------------------------------------------------------------------------
def test_fit_recovers_a_known_exponent():
    scaling = load_script("scaling")
    n = np.array([196, 576, 1024, 2304, 4096, 16384], dtype=float)
    wobble = 1 + 0.02 * np.array([1, -1, 0.5, -0.5, 1, -1])  # +-2% measurement noise
    exponent, coeff = scaling.fit_power_law(n, 3e-6 * n ** 2 * wobble)
    assert exponent == pytest.approx(2.0, abs=0.01)
    assert coeff == pytest.approx(3e-6, rel=0.1)
    assert scaling.fit_power_law(n, 0.5 * n)[0] == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(ValueError, match="2 distinct positive sizes"):
        scaling.fit_power_law([100, 100], [1.0, 2.0])


def test_crossing_of_two_power_laws():
    scaling = load_script("scaling")
    linear, quadratic = (1.0, 1e-3), (2.0, 1e-6)  # (exponent, coefficient): equal at N = 1e-3 / 1e-6 = 1000
    assert scaling.crossing(linear, quadratic) == pytest.approx(1000.0)
    assert scaling.crossing(quadratic, linear) == pytest.approx(1000.0)
    assert scaling.crossing(linear, (1.0, 5e-3)) is None
    text = scaling.describe_crossing(linear, quadratic, (100, 10000), stride=4)
    assert text.startswith("N≈1,000 (side≈126)") and "global costlier above" in text  # sqrt(1000) * 4
    assert scaling.describe_crossing(linear, quadratic, (2000, 8000), 4) == \
        "no crossing in range (global costlier throughout)"
    assert scaling.describe_crossing(linear, quadratic, (10, 500), 4) == \
        "no crossing in range (global cheaper throughout)"
    assert math.isclose(scaling.crossing((0.5, 2.0), (1.5, 0.02)), 100.0)
    assert scaling.crossing((1.0, 1.0), (1.0 + 1e-7, 0.5)) == math.inf  # nearly parallel: they meet far away
    assert scaling.describe_crossing((1.0, 1.0), (1.0 + 1e-7, 0.5), (10, 1000), 16).startswith("no crossing")


def test_tiny_scaling_run_writes_png_and_table(tmp_path, restore_threads):
    scaling = load_script("scaling")
    png, md = tmp_path / "s.png", tmp_path / "s.md"
    code = scaling.main(["--mixers", "swin", "--sizes", "56", "84", "--models", "--repeats", "1", "--threads", "1",
                         "--png", str(png), "--out", str(md)])
    assert code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    row = next(line for line in md.read_text().splitlines() if line.startswith("| shifted window"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "56→196 / 84→441"  # (side / 4)^2 tokens
    assert len(cells[2].split(" / ")) == 2 and all(float(v) > 0 for v in cells[2].split(" / "))
    float(cells[5].split(" / ")[0])  # a fitted exponent, not a dash
    assert cells[7] == "no global series"

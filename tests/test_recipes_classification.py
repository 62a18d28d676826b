"""Every image-classification paper recipe (configs/classification/**.yaml) runs, and says what it reproduces.

Each recipe is composed exactly as ``vitlab train --config FILE`` composes it (through the CLI entry
point) and trains two optimizer steps on the built-in ``digits`` set. Only sizes and lengths are
overridden: the data (digits, 32 px, batch 2, a 20-image train split, 10 held-out), the stop
(``--max-steps 2``), threads/workers/device, the output folder, plots off, and on a CPU the fp16
autocast that needs a GPU. Everything else (RandAugment, random erasing, Mixup/CutMix, MixToken, the
token-labeling loss, drop path, EMA, lr scaling, warm-up) stays as the recipe has it, and the test checks
that the run's config.yaml equals the recipe's outside those keys. Recipes whose model has more than
60M parameters are marked slow (``make test-slow``).

The header check reads each file's leading comment block: it must name the paper's / official result,
the global batch as ``data.batch_size x processes`` (matching the config), how the lr scales
(``optim.lr_base_batch``, matching the config), the torchrun command for this very file and a source URL.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from vitlab.engine.config import load_yaml
from vitlab.models.index import load_index
from vitlab.tasks import make_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs" / "classification"
CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
PARAMS = {row["name"]: row["params"] for row in load_index()}
SLOW_PARAMS = 60_000_000

# what the smoke run overrides; every other key must stay as the recipe has it
OVERRIDDEN = {("data", "name"), ("data", "img_size"), ("data", "batch_size"), ("data", "eval_batch_size"),
              ("data", "workers"), ("data", "options"), ("sched", "max_steps"), ("amp", "dtype"),
              ("run", "output"), ("run", "threads"), ("run", "device"), ("run", "log_every"),
              ("run", "progress"), ("run", "plots")}


def _model_name(path: Path) -> str:
    return load_yaml(path)["model"]["name"]


def _case(path: Path):
    big = (PARAMS.get(_model_name(path)) or 0) > SLOW_PARAMS
    return pytest.param(path, id=path.relative_to(CONFIG_DIR).as_posix(), marks=[pytest.mark.slow] if big else [])


def header(path: Path) -> str:
    """The leading comment block, without the ``#`` marks."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return "\n".join(lines)


def test_there_is_a_recipe_for_every_family():
    names = {_model_name(p) for p in CONFIGS}
    assert {"volo_d1", "volo_d5_512", "uniformer_small", "uniformer_base_token_labeling", "uniformer_xxs",
            "uniformer_xs", "pale_tiny", "pale_base"} <= names


@pytest.mark.parametrize("path", [pytest.param(p, id=p.relative_to(CONFIG_DIR).as_posix()) for p in CONFIGS])
def test_header_names_result_batch_lr_scaling_and_command(path):
    import vitlab
    text, layer = header(path), load_yaml(path)
    cfg = make_config(layer.get("task", "classification"), [(str(path), layer)])
    assert cfg["task"] == "classification"
    assert cfg["model"]["name"] in vitlab.list_models(), f"{cfg['model']['name']} is not a registered model"
    assert re.search(r"(Official|Paper) result: [^\n]*\d+(\.\d+)?% top-1", text), "no paper/official result"
    batch = re.search(r"Global batch (\d+) = data\.batch_size (\d+) x (\d+) processes", text)
    assert batch, "the header must give the global batch as data.batch_size x processes"
    total, per_process, procs = (int(g) for g in batch.groups())
    assert per_process == cfg["data"]["batch_size"] and total == per_process * procs
    scaling = re.search(r"optim\.lr_base_batch (\d+)", text)
    assert scaling and cfg["optim"]["lr_base_batch"] == int(scaling.group(1)), "lr scaling not stated or not the config's"
    command = re.search(r"torchrun --nproc_per_node (\d+) -m vitlab train --config (\S+)", text)
    assert command and int(command.group(1)) == procs
    assert command.group(2) == path.relative_to(ROOT).as_posix()
    assert re.search(r"Sources?: [^\n]*https://", text), "no source URL"
    assert cfg["data"]["name"].startswith("folder:") and cfg["data"]["img_size"]
    if cfg["aug"]["mix_token"]:   # token-labeling recipes: the maps are external and named
        assert cfg["aug"]["token_labels"] is None and "drive.google.com" in path.read_text(encoding="utf-8")


@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def run_dir(tmp_path):
    """The run folder, removed afterwards: checkpoints of a full-size model take 0.3-8 GB (VOLO-D5)."""
    out = tmp_path / "run"
    yield out
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.parametrize("path", [_case(p) for p in CONFIGS])
def test_recipe_trains_two_steps(path, run_dir, keep_threads, capsys):
    from vitlab.cli.main import main
    gpu = torch.cuda.is_available()
    out = run_dir
    argv = ["train", "--config", str(path), "--data", "digits", "--img-size", "32", "--batch-size", "2",
            "--max-steps", "2", "--log-every", "1", "--threads", "1", "--workers", "0",
            "--device", "cuda" if gpu else "cpu", "--progress", "log",
            "--set", "data.eval_batch_size=10", "--set", "data.options.train_limit=20",
            "--set", "data.options.held_out=10", "--set", "run.plots=false", "-o", str(out)]
    if not gpu:
        argv += ["--set", "amp.dtype=null"]   # fp16 autocast needs a GPU
    rc = main(argv)
    assert rc == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in train)
    assert json.loads((out / "final.json").read_text())["step"] == 2

    ran = load_yaml(out / "config.yaml")
    layer = load_yaml(path)
    recipe = make_config("classification", [(str(path), layer)])
    changed = [f"{section}.{key}" for section, keys in recipe.items() if isinstance(keys, dict)
               for key in keys if (section, key) not in OVERRIDDEN and ran[section][key] != keys[key]]
    assert not changed, f"the smoke run changed recipe settings: {changed}"

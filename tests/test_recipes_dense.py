"""The segmentation, video and EsViT-pretraining paper recipes (configs/segmentation, configs/video,
configs/pretraining/esvit_*).

For every file: its header names the result to reproduce, the global batch (data.batch_size x processes), how the
lr scales with it (optim.lr_base_batch) and a torchrun command for exactly that many processes; it composes as
``vitlab train --config`` composes it and names a registered model; and two optimizer steps of it run through
``vitlab train --config FILE`` on a built-in stand-in (texture-scenes, synthetic-video, animal-mnist), overriding
only sizes (data, crops, frames, batch 2), the length (2 steps), threads, workers, the output folder, and on a
CPU the autocast dtype (the recipes' fp16 needs a GPU).

The fast suite runs two steps for one recipe per network of at most 60M parameters (a window-14 Swin and the hybrid
UniFormer-S counted with their twins) and for one Something-Something recipe, whose sampling and 3-crop test
differ; every other recipe -- the models above 60M and the further recipes of an already-covered network -- runs
under ``make test-slow`` (each of those differs from its fast twin only in numbers the composition test checks).
"""
from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import pytest
import torch

import vitlab
from vitlab.cli.main import main
from vitlab.engine.config import load_yaml
from vitlab.models.registry import build_without_weights
from vitlab.tasks import make_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted([*(ROOT / "configs" / "segmentation").glob("*.yaml"), *(ROOT / "configs" / "video").glob("*.yaml"),
                  *(ROOT / "configs" / "pretraining").glob("esvit_*.yaml")])
IDS = [p.relative_to(ROOT / "configs").as_posix() for p in RECIPES]
LIMIT = 60e6   # parameters: above this a two-step CPU run is a slow test

# one recipe per network <= 60M parameters (+ the SSv2 data path): the two-step runs of the fast suite
FAST = {
    "segmentation/upernet_swin_tiny_ade20k_512x512_160k.yaml",
    "segmentation/upernet_pale_tiny_ade20k_512x512_160k.yaml",
    "segmentation/upernet_volo_d1_ade20k_512x512_160k.yaml",
    "segmentation/upernet_uniformer_small_ade20k_512x512_160k.yaml",
    "video/uniformer_small_k400_16x4.yaml",
    "video/uniformer_base_k400_16x4.yaml",
    "video/uniformer_small_ssv2_16f_prek400.yaml",
    "pretraining/esvit_swin_tiny_w7_300ep.yaml",
    "pretraining/esvit_swin_small_w7_300ep.yaml",
}
EXPECTED = {"segmentation": 20, "video": 21, "pretraining": 6}


def _recipe(path: Path) -> tuple[dict, dict]:
    layer = load_yaml(path)
    return layer, make_config(layer["task"], [(str(path), layer)])


def _header(path: Path) -> str:
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:].strip())
    return " ".join(lines)


def _network_params(cfg: dict) -> int:
    """Parameters of the network ``model.name`` builds (meta device): the segmentor, the video model, the backbone."""
    kwargs = dict(cfg["model"]["kwargs"])
    if cfg["task"] == "pretraining":
        kwargs.update(num_classes=0, img_size=cfg["esvit"]["global_size"])
    return sum(p.numel() for p in build_without_weights(cfg["model"]["name"], **kwargs).parameters())


def test_every_recipe_is_here():
    found = {k: sum(i.startswith(k) for i in IDS) for k in EXPECTED}
    assert found == EXPECTED
    assert FAST <= set(IDS)


# --- headers ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_header_names_the_result_the_global_batch_and_the_lr_scaling(path):
    layer, cfg = _recipe(path)
    text = _header(path)
    rel = path.relative_to(ROOT).as_posix()
    assert re.search(r"Result to reproduce: .{0,160}?\d+\.\d+(%| mIoU)", text), f"{rel}: no result with its number"
    assert re.search(r"https://github\.com/\S+", text), f"{rel}: no source URL"
    m = re.search(r"Global batch (\d+) = data\.batch_size (\d+) x (\d+) processes", text)
    assert m, f"{rel}: the header does not state 'Global batch N = data.batch_size b x p processes'"
    glob, per, procs = map(int, m.groups())
    assert per == cfg["data"]["batch_size"] == layer["data"]["batch_size"] and per * procs == glob
    base = cfg["optim"]["lr_base_batch"]
    assert f"optim.lr_base_batch: {base}" in text, f"{rel}: the header does not say how the lr scales"
    # segmentation and video give the lr for the recipe's own global batch; DINO / EsViT give it per 256 images
    assert base == (256 if cfg["task"] == "pretraining" else glob)
    cmd = next((line for line in path.read_text().splitlines() if "torchrun" in line), "")
    assert f"--config {rel}" in cmd, f"{rel}: the torchrun command does not run this file"
    nodes = re.search(r"--nnodes (\d+)", cmd)
    nproc = re.search(r"--nproc_per_node (\d+)", cmd)
    assert nproc and int(nproc.group(1)) * (int(nodes.group(1)) if nodes else 1) == procs, cmd


# --- composition -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", RECIPES, ids=IDS)
def test_recipe_composes_and_its_model_is_registered(path):
    layer, cfg = _recipe(path)
    task = {"segmentation": "segmentation", "video": "video", "pretraining": "pretraining"}[path.parent.name]
    assert layer["task"] == cfg["task"] == task
    name = cfg["model"]["name"]
    registered = set(vitlab.list_models(include_families=True))
    assert name in registered, f"model.name {name!r} is not registered"
    backbone = cfg["model"]["kwargs"].get("backbone")
    if backbone is not None:
        assert backbone in registered, f"model.kwargs.backbone {backbone!r} is not registered"
    n = _network_params(cfg)
    rel = path.relative_to(ROOT / "configs").as_posix()
    assert n > 0 and not (n > LIMIT and rel in FAST), f"{rel}: {n / 1e6:.1f}M parameters cannot be a fast run"
    # the schedule the paper runs: iterations for segmentation, epochs for the others
    if task == "segmentation":
        assert cfg["sched"]["name"] == "poly" and cfg["sched"]["steps"] in (80000, 160000)
        assert cfg["seg"]["num_classes"] in (150, 171, 59, 60) and cfg["seg"]["mode"] in ("whole", "slide")
    elif task == "video":
        o = cfg["data"]["options"]
        assert o["num_frames"] == cfg["model"]["kwargs"]["num_frames"] in (8, 16, 32)
        assert (o["test_clips"], o["test_crops"]) == ((1, 3) if "ssv2" in rel else (4, 1))
    else:
        assert cfg["sched"]["epochs"] == 300 and cfg["esvit"]["out_dim"] == 65536


# --- two optimizer steps ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Where the small stand-in sets go: 4 + 1 texture scenes of 64 px, 6 + 6 synthetic videos (made on first use)."""
    root = tmp_path_factory.mktemp("stand_ins")
    return {"scenes": root / "scenes", "videos": root / "videos"}


def _scenes(folder: Path) -> Path:
    pytest.importorskip("skimage", reason="the built-in texture-scenes cut their textures from scikit-image's images")
    from vitlab.data.synthetic_scenes import write_texture_scenes
    if not (folder / "dataset.json").is_file():
        write_texture_scenes(folder, num_train=4, num_val=1, size=64, seed=1)
    return folder


def _overrides(task: str, data: dict) -> list[str]:
    """Sizes, data and length only: the recipe's optimisation, schedule and augmentation stay as they are."""
    if task == "segmentation":
        sets = ["--data", "texture-scenes", "--set", f"seg.data_root={_scenes(data['scenes'])}",
                "--set", "seg.num_classes=null", "--set", "seg.reduce_zero_label=null",
                "--set", "seg.crop_size=64", "--set", "seg.scale=64", "--set", "seg.stride=32",
                "--set", "seg.overlays=0", "--set", "model.kwargs.img_size=64"]
    elif task == "video":
        sets = ["--data", "synthetic-video", "--img-size", "32", "--epochs", "1",
                "--set", f"data.root={data['videos']}", "--set", "data.options.per_class_train=1",
                "--set", "data.options.per_class_val=1", "--set", "data.options.num_frames=8",
                "--set", "model.kwargs.num_frames=8"]
    else:
        sets = ["--data", "animal-mnist", "--epochs", "1", "--set", "esvit.global_size=32",
                "--set", "esvit.local_size=16", "--set", "data.options.train_limit=16",
                "--set", "data.options.held_out=16", "--set", "esvit.figures=false"]
    if not torch.cuda.is_available():
        sets += ["--set", "amp.dtype=null"]      # fp16 autocast needs a GPU; the CPU runs in fp32
    return sets


def _needs_disk(cfg: dict) -> int:
    """Bytes the run's folder takes at its peak: last.pth and best.pth (weights + AdamW's two moments), model/."""
    n = _network_params(cfg) + (60_000_000 if cfg["task"] == "pretraining" else 0)   # + the DINO heads
    return 4 * n * (14 if cfg["task"] == "pretraining" else 7) + (1 << 30)


def _two_steps(path: Path, tmp_path: Path, stand_ins: dict) -> None:
    _, cfg = _recipe(path)
    free = shutil.disk_usage(tmp_path).free
    if free < _needs_disk(cfg):
        pytest.skip(f"{path.name}: the run's checkpoints need ~{_needs_disk(cfg) / 2**30:.0f} GiB, "
                    f"{free / 2**30:.0f} GiB free")
    out = tmp_path / "run"
    try:
        rc = main(["train", "--config", str(path), "--batch-size", "2", "--max-steps", "2", "--threads", "1",
                   "--workers", "0", "--log-every", "1", "--progress", "log", "-o", str(out),
                   "--set", "run.plots=false", *_overrides(cfg["task"], stand_ins)])
        assert rc == 0
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
        train = [r for r in records if r["kind"] == "train"]
        assert [r["step"] for r in train] == [1, 2]
        assert all(math.isfinite(r["loss"]) for r in train), train
        assert [r["step"] for r in records if r["kind"] == "eval"] == [2]
        saved = load_yaml(out / "config.yaml")          # the recipe's optimisation and schedule, untouched
        assert saved["optim"] == cfg["optim"]
        length = {"max_steps": 2, **({} if cfg["task"] == "segmentation" else {"epochs": 1})}
        assert saved["sched"] == {**cfg["sched"], **length}
    finally:
        shutil.rmtree(out, ignore_errors=True)   # GBs of checkpoints: never leave them in pytest's kept tmp dirs


FAST_PATHS = [p for p, i in zip(RECIPES, IDS) if i in FAST]
SLOW_PATHS = [p for p, i in zip(RECIPES, IDS) if i not in FAST]


@pytest.mark.parametrize("path", FAST_PATHS, ids=[i for i in IDS if i in FAST])
def test_two_steps(path, tmp_path, stand_ins):
    _two_steps(path, tmp_path, stand_ins)


@pytest.mark.slow
@pytest.mark.parametrize("path", SLOW_PATHS, ids=[i for i in IDS if i not in FAST])
def test_two_steps_slow(path, tmp_path, stand_ins):
    _two_steps(path, tmp_path, stand_ins)

"""Every task is checked the same way on the one engine (CPU, gloo):

* torchrun with 2 processes: the per-step losses equal those of one process with the same global batch
  (relative 1e-4), and the weights end up the same;
* a run killed with SIGKILL in the middle of an epoch and resumed with ``--resume`` ends bit-identical to
  an uninterrupted run: weights, EMA, optimizer state, the task's own state (EsViT's teacher and
  centres) and ``metrics.jsonl``.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from test_train_utils import CLASSIFICATION, load_state, merge, micro_config, read_metrics, train, train_losses, \
    write_recipe

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip("av", reason="the video task decodes its clips with PyAV")
pytest.importorskip("skimage", reason="the texture scenes cut their textures from scikit-image's images")


def _recipes(cache: Path) -> dict[str, dict]:
    """Micro recipes of the tasks; ``cache`` holds the generated video, scene and COCO sets."""
    from vitlab.data.synthetic_coco import write_synthetic_instances, write_synthetic_keypoints
    from vitlab.data.synthetic_scenes import write_texture_scenes
    scenes = write_texture_scenes(cache / "scenes", num_train=12, num_val=2, size=40, seed=1)
    instances = write_synthetic_instances(cache / "instances", num_train=8, num_val=2, size=96, seed=1)
    people = write_synthetic_keypoints(cache / "people", num_train=8, num_val=2, size=96, seed=1)
    common_run = {"threads": 1, "log_every": 1, "plots": False, "progress": "log"}
    return {
        "classification": merge(CLASSIFICATION, data={"batch_size": 16, "options": {"held_out": 200,
                                                                                      "train_limit": 96}},
                                sched={"epochs": 2, "warmup_epochs": 0.5}),
        "video": {"model": {"name": "uniformer_video_micro"},
                  "data": {"name": "synthetic-video", "root": str(cache / "videos"), "batch_size": 8,
                           "eval_batch_size": 8, "img_size": 32,
                           "options": {"per_class_train": 4, "per_class_val": 1, "video_frames": 8, "video_size": 40,
                                       "num_frames": 4, "stride": 2}},
                  "sched": {"epochs": 2, "warmup_epochs": 0.5}, "run": common_run},
        "segmentation": {"data": {"name": "texture-scenes", "batch_size": 4},
                         "seg": {"data_root": str(scenes), "crop_size": 32, "overlays": 0},
                         "sched": {"steps": 6, "warmup_steps": 1}, "optim": {"lr": 2e-3},
                         "run": {**common_run, "eval_every_steps": 3}},
        "pretraining": {"model": {"drop_path": 0.0},
                        "data": {"name": "digits", "batch_size": 16, "options": {"held_out": 300, "train_limit": 96}},
                        "esvit": {"global_size": 16, "local_size": 8, "n_local": 2, "out_dim": 32,
                                  "head_hidden_dim": 16, "head_bottleneck_dim": 8, "figures": False},
                        "optim": {"lr": 5e-3}, "sched": {"epochs": 2, "warmup_epochs": 0.5}, "run": common_run},
        "detection": {"data": {"name": "synthetic-coco", "batch_size": 2},
                      "det": {"data_root": str(instances), "train_scales": [96], "test_scale": 96, "max_size": 128,
                              "visualize": 0},
                      "optim": {"lr": 1e-3}, "sched": {"epochs": 2, "warmup_steps": 2}, "run": common_run},
        "pose": {"data": {"name": "synthetic-keypoints", "batch_size": 4},
                 "pose": {"data_root": str(people), "input_size": [64, 64], "heatmap_size": [16, 16], "sigma": 1.0,
                          "visualize": 0},
                 "sched": {"epochs": 2, "milestones": [1], "warmup_steps": 2}, "run": {**common_run, "eval_every": 1}},
    }


TASKS = ["classification", "video", "segmentation", "pretraining"]
# Detection samples RoIs and pose uses BatchNorm in its head: per-process RNG streams and batch statistics
# make their 2-process losses differ from one process by design, so they take the resume check only.
RESUME_TASKS = TASKS + ["detection", "pose"]


@pytest.fixture(scope="module")
def recipes(tmp_path_factory):
    return _recipes(tmp_path_factory.mktemp("data"))


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


# --- torchrun: 2 processes == 1 process with the same global batch ---------------------------------------

NO_DROPOUT = textwrap.dedent("""
    import sys
    import torch
    import torch.nn.functional as F
    sdpa = F.scaled_dot_product_attention
    torch.nn.Dropout.forward = lambda self, x: x
    F.dropout = lambda x, p=0.5, training=True, inplace=False: x
    F.scaled_dot_product_attention = lambda *a, **k: sdpa(*a, **{**k, "dropout_p": 0.0})
    if __name__ == "__main__":
        from vitlab.cli.main import main
        sys.exit(main(sys.argv[1:]))
""")


def _without_dropout(monkeypatch) -> None:
    """Dropout draws from each process's own RNG stream, so no number of processes can reproduce one
    process's masks: the comparison turns it off (SegViT's decoder has dropout 0.1)."""
    import torch.nn.functional as F
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.Dropout, "forward", lambda self, x: x)
    monkeypatch.setattr(F, "dropout", lambda x, p=0.5, training=True, inplace=False: x)
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: sdpa(*a, **{**k, "dropout_p": 0.0}))


def _ddp_recipe(recipe: dict, task: str, batch: int) -> dict:
    """Deterministic across process counts: no drop-path or dropout, BatchNorm frozen (CPU ranks keep
    per-process statistics), no batch-mixing augmentation."""
    out = merge(recipe, data={"batch_size": batch}, run={"eval_every": 0})
    if task in ("classification", "video"):
        out = merge(out, model={"freeze_bn": True}, aug={"mixup": 0.0, "cutmix": 0.0})
    return out


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("task", TASKS)
def test_two_gloo_processes_match_one_process(task, recipes, tmp_path, monkeypatch):
    recipe = recipes[task]
    batch = recipe["data"]["batch_size"]
    with monkeypatch.context() as patch:
        _without_dropout(patch)
        single = train(micro_config(tmp_path / "single", task, _ddp_recipe(recipe, task, batch)))
    ddp_cfg = micro_config(tmp_path / "ddp", task, _ddp_recipe(recipe, task, batch // 2))
    write_recipe(tmp_path / "ddp.yaml", ddp_cfg)
    (tmp_path / "no_dropout.py").write_text(NO_DROPOUT)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "no_dropout.py"), "train", "--config", str(tmp_path / "ddp.yaml")],
                          env=_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = train_losses(tmp_path / "single"), train_losses(tmp_path / "ddp")
    assert len(a) == len(b) == single["step"] >= 4
    assert b == pytest.approx(a, rel=1e-4, abs=1e-6)
    wa, wb = load_state(tmp_path / "single"), load_state(tmp_path / "ddp")
    for name, value in wa["model"].items():
        assert torch.allclose(value.float(), wb["model"][name].float(), atol=2e-4), name
    assert wb["meta"]["world_size"] == 2 and wb["meta"]["global_batch"] == wa["meta"]["global_batch"]
    if task == "classification":
        final = load_state(tmp_path / "ddp")["engine"]["last_eval"]
        assert final["count"] == 200                     # the held-out set is sharded, not duplicated


# --- SIGKILL mid-epoch, then --resume: bit-identical ---------------------------------------------------------

SLOW = textwrap.dedent("""
    import sys, time
    import vitlab.engine.loop as loop
    step = loop.optimizer_step
    def slow_step(s):
        time.sleep(0.15)   # long enough steps to be killed between two checkpoints
        return step(s)
    loop.optimizer_step = slow_step
    from vitlab.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def _kill_recipe(recipe: dict, task: str) -> dict:
    """Every source of randomness on (augmentation, mixing, drop-path, EMA) and a checkpoint every 2 steps."""
    out = merge(recipe, run={"checkpoint_every": 2})
    if task == "classification":
        out = merge(out, aug={"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.2, "cutmix": 1.0},
                    model={"drop_path": 0.1}, ema={"enabled": True, "decay": 0.9})
    if task == "pretraining":
        out = merge(out, model={"drop_path": 0.1})
    return out


def _step_of(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return None


def _assert_same_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] and a["epoch"] == b["epoch"]
    for key in ("model", "state_dict_ema", "teacher"):
        if a.get(key) is None:
            assert b.get(key) is None
            continue
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    if "dino_loss" in a:
        for name in a["dino_loss"]:
            assert torch.equal(a["dino_loss"][name], b["dino_loss"][name]), f"loss centre {name} differs"


@pytest.mark.parametrize("task", RESUME_TASKS)
def test_sigkill_mid_epoch_then_resume_is_bit_identical(task, recipes, tmp_path):
    recipe = _kill_recipe(recipes[task], task)
    reference = train(micro_config(tmp_path / "reference", task, recipe))
    run_dir = tmp_path / "killed"
    write_recipe(tmp_path / "recipe.yaml", micro_config(run_dir, task, recipe))
    per_epoch = reference["step"] // max(reference["epoch"], 1)
    proc = subprocess.Popen([sys.executable, "-c", SLOW, "train", "--config", str(tmp_path / "recipe.yaml")],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at, deadline = None, time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        step = _step_of(run_dir / "last.pth") if (run_dir / "last.pth").exists() else None
        if step is not None and step >= 2 and step % per_epoch:
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL
    assert (run_dir / ".lock").exists()                           # left by the killed run, taken over below
    resumed = subprocess.run([sys.executable, "-m", "vitlab", "train", "--resume", str(run_dir)], env=_env(),
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed {run_dir} at epoch" in resumed.stdout
    _assert_same_state(load_state(tmp_path / "reference"), load_state(run_dir))
    assert read_metrics(tmp_path / "reference") == read_metrics(run_dir)
    assert not (run_dir / ".lock").exists()

"""Exact resume: a run killed with SIGKILL mid-epoch and resumed ends bit-identical to an uninterrupted run."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from vitlab.cli.main import main as vitlab_main
from vitlab.engine.config import dump_yaml
from vitlab.engine.trainer import train
from test_train_utils import micro_config, read_metrics

ROOT = Path(__file__).resolve().parents[1]

# every source of randomness on: augmentation, mixup/cutmix, drop-path, EMA
RECIPE = dict(aug={"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25, "mixup": 0.2, "cutmix": 1.0,
                   "scale": [0.5, 1.0], "crop_pct": 1.0},
              model={"name": "volo_micro", "kwargs": {"img_size": 16, "patch_size": 4, "in_chans": 1},
                     "drop_path": 0.1},
              ema={"enabled": True, "decay": 0.9},
              run={"checkpoint_every": 3, "log_every": 1, "threads": 1, "plots": False, "progress": "log"})

SLOW_TRAIN = textwrap.dedent("""
    import sys, time
    from vitlab.data import registry
    from vitlab.data.registry import get_dataset_entry
    fast = get_dataset_entry("digits").builder
    def slow(req):
        bundle = fast(req)
        load = bundle.train.load
        def slow_load(idx, generator):
            time.sleep(0.003)  # keep each step long enough to be killed mid-epoch
            return load(idx, generator)
        bundle.train.load = slow_load
        return bundle
    registry._DATASETS["digits"].builder = slow
    from vitlab.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def _checkpoint_step(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:
        return None


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path):
    reference = micro_config(tmp_path / "reference", **RECIPE)
    reference["data"]["options"]["train_limit"] = 192
    train(reference)

    run_dir = tmp_path / "killed"
    cfg = micro_config(run_dir, **RECIPE)
    cfg["data"]["options"]["train_limit"] = 192
    (tmp_path / "recipe.yaml").write_text(dump_yaml(cfg))
    steps_per_epoch = 192 // 16
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, "train", "--config", str(tmp_path / "recipe.yaml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_at = None
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        step = _checkpoint_step(run_dir / "last.pth") if (run_dir / "last.pth").exists() else None
        if step is not None and step >= 3 and step % steps_per_epoch:
            proc.send_signal(signal.SIGKILL)
            killed_at = step
            break
        time.sleep(0.02)
    proc.wait()
    assert killed_at is not None, f"the run ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    assert proc.returncode == -signal.SIGKILL

    assert vitlab_main(["train", "--resume", str(run_dir)]) == 0

    a = torch.load(tmp_path / "reference" / "last.pth", map_location="cpu", weights_only=True)
    b = torch.load(run_dir / "last.pth", map_location="cpu", weights_only=True)
    assert a["step"] == b["step"] == 2 * steps_per_epoch
    for key in ("model", "state_dict_ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs after resume"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert read_metrics(tmp_path / "reference") == read_metrics(run_dir)

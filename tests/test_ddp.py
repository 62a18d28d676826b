"""torchrun with 2 CPU processes (gloo): ranks stay identical and the loss matches one process with the same global batch."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vitlab.engine.config import dump_yaml
from vitlab.engine.trainer import train
from test_train_utils import micro_config, read_metrics

ROOT = Path(__file__).resolve().parents[1]

RANK_SCRIPT = textwrap.dedent("""
    import os, sys, torch
    from vitlab.engine.config import build_config
    from vitlab.engine.trainer import train
    cfg = build_config(sys.argv[1])
    result = train(cfg, return_model=True)
    torch.save(result["model"].state_dict(), os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.pt"))
""")


def _recipe(output, batch_size):
    # frozen BatchNorm: CPU DDP has no SyncBatchNorm, and per-rank batch statistics would differ from the
    # single-process ones; everything else (augmentation, sampling, optimizer) must agree exactly
    return micro_config(output, data={"batch_size": batch_size}, model={"freeze_bn": True},
                        sched={"epochs": 1, "max_steps": 6}, run={"log_every": 1, "threads": 1})


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_gloo_ranks_match_single_process_with_the_same_global_batch(tmp_path):
    single = train(_recipe(tmp_path / "single", 16))

    ddp_dir = tmp_path / "ddp"
    (tmp_path / "ddp.yaml").write_text(dump_yaml(_recipe(ddp_dir, 8)))
    (tmp_path / "rank.py").write_text(RANK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(tmp_path / "rank.py"), str(tmp_path / "ddp.yaml"), str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), f"ranks disagree on {name}"

    single_losses = [r["loss"] for r in read_metrics(tmp_path / "single") if r["kind"] == "train"]
    ddp_losses = [r["loss"] for r in read_metrics(ddp_dir) if r["kind"] == "train"]
    assert len(ddp_losses) == len(single_losses) == 6
    assert ddp_losses == pytest.approx(single_losses, rel=1e-4, abs=1e-5)
    single_weights = torch.load(tmp_path / "single" / "last.pth", weights_only=True)["model"]
    for name, value in rank0.items():
        assert torch.allclose(value, single_weights[name], atol=1e-4), name
    final = json.loads((ddp_dir / "final.json").read_text())
    assert final["count"] == 200                          # the held-out set is sharded, not duplicated
    assert final["top1"] == pytest.approx(single["top1"], abs=1.0)
    assert not (ddp_dir / "rank1").exists()

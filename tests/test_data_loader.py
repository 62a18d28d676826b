"""Seeded sampling: worker-count independence, epoch reshuffles, disjoint DDP shards, mid-epoch restart."""
from __future__ import annotations

import itertools

import torch

from vitlab.data.sampler import SeededSampler
from vitlab.engine.distributed import DistInfo
from vitlab.engine.loaders import train_loader
from vitlab.tasks.classification import build_image_data
from test_train_utils import micro_config


def _batches(cfg, n=3):
    bundle, _ = build_image_data(cfg)
    loader, sampler = train_loader(bundle.train, batch_size=cfg["data"]["batch_size"], accum_steps=1,
                                   workers=cfg["data"]["workers"], seed=cfg["run"]["seed"], dist=DistInfo())
    sampler.set_epoch(1)
    return [b[:2] for b in itertools.islice(iter(loader), n)]


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    cfg = micro_config(tmp_path, aug={"auto_augment": "rand-m9-mstd0.5-inc1", "reprob": 0.25})
    serial = _batches(cfg)
    cfg["data"]["workers"] = 2
    parallel = _batches(cfg)
    for (xa, ya), (xb, yb) in zip(serial, parallel):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_sampler_epochs_shards_and_restart():
    s = SeededSampler(100, seed=3, batch_size=10, drop_last=True)
    s.set_epoch(0)
    e0 = [i for i, _ in s]
    s.set_epoch(1)
    e1 = [i for i, _ in s]
    assert sorted(e0) == sorted(e1) == list(range(100)) and e0 != e1
    assert list(_at(1, 30)) == list(_at(1, 0))[30:]  # a resumed epoch continues with the same keys
    ranks = [SeededSampler(100, seed=3, rank=r, world_size=2, batch_size=10, drop_last=True) for r in (0, 1)]
    for r in ranks:
        r.set_epoch(1)
    shards = [[i for i, _ in r] for r in ranks]
    assert len(shards[0]) == len(shards[1]) == 50 and not set(shards[0]) & set(shards[1])
    # step k of 2 ranks x batch 5 covers the same positions as step k of 1 rank x batch 10
    assert sorted(shards[0][:5] + shards[1][:5]) == sorted(e1[:10])


def _at(epoch, start):
    s = SeededSampler(100, seed=3, batch_size=10, drop_last=True)
    s.set_epoch(epoch, start)
    return s

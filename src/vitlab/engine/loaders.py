"""DataLoaders for training and evaluation, the same for every task.

Training: :class:`~vitlab.data.sampler.SeededSampler` gives every position of an epoch its own
augmentation seed, so batches do not depend on the number of workers, every torchrun rank takes
its share of one global order, and a resumed run continues mid-epoch with the very same samples.
Evaluation: :class:`~vitlab.data.sampler.ShardSampler` splits the set over the ranks without
padding (nothing is counted twice). Unreadable samples are dropped by the collate function and
reported with their file names.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from vitlab.data.folder import collate_skipping
from vitlab.data.sampler import SeededSampler, ShardSampler

from .distributed import DistInfo


def _worker_init(worker_id: int) -> None:
    import random

    import numpy as np
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def train_loader(dataset, *, batch_size: int, accum_steps: int, workers: int, seed: int, dist: DistInfo,
                 pin_memory: bool = False, collate_fn=collate_skipping) -> tuple[DataLoader, SeededSampler]:
    """Shuffled, seeded, drop-last batches of ``batch_size`` (per process); whole optimizer steps per epoch."""
    sampler = SeededSampler(len(dataset), shuffle=True, seed=seed, rank=dist.rank, world_size=dist.world_size,
                            drop_last=True, batch_size=batch_size * accum_steps,
                            keys_only=not getattr(dataset, "seeded", False))
    g = torch.Generator()
    g.manual_seed(seed)  # the loader draws its worker seeds from here, never from the global RNG (exact resume)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                        drop_last=True, worker_init_fn=_worker_init, generator=g, pin_memory=pin_memory,
                        persistent_workers=False, prefetch_factor=4 if workers else None)
    return loader, sampler


def eval_loader(dataset, *, batch_size: int, workers: int, dist: DistInfo, pin_memory: bool = False,
                collate_fn=collate_skipping) -> DataLoader:
    """In-order batches of this rank's shard of ``dataset``."""
    sampler = ShardSampler(len(dataset), dist.rank, dist.world_size)
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      generator=g, worker_init_fn=_worker_init, pin_memory=pin_memory)

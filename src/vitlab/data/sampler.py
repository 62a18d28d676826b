"""Resumable, distributed, seeded sampling.

:class:`SeededSampler` yields ``(index, sample_seed)`` keys. The order of an epoch is a seeded
permutation of ``(seed, epoch)``; each position gets its own augmentation seed. Under DDP each
rank takes every ``world_size``-th position of the (padded) permutation, as
``torch.utils.data.DistributedSampler`` does. ``keys_only`` yields plain indices (for datasets without seeded augmentation). ``start`` skips the positions a resumed run has
already consumed in the current epoch.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

_SEED_STRIDE = 1_000_003


def sample_seed(seed: int, epoch: int, position: int) -> int:
    return (seed * 6364136223846793005 + epoch * 1442695040888963407 + position * _SEED_STRIDE) % (2 ** 63 - 1)


class SeededSampler(Sampler):
    def __init__(self, num_samples: int, shuffle: bool = True, seed: int = 0, rank: int = 0, world_size: int = 1,
                 drop_last: bool = False, batch_size: int = 1, keys_only: bool = False):
        if num_samples <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n, self.shuffle, self.seed = num_samples, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.batch_size, self.keys_only = batch_size, keys_only
        self.epoch, self.start = 0, 0
        per_rank = -(-num_samples // world_size)
        if drop_last:  # whole batches only, so every rank runs the same number of steps
            per_rank = (num_samples // world_size) // batch_size * batch_size
            if per_rank == 0:
                raise ValueError(f"{num_samples} samples are fewer than one batch of {batch_size} per rank "
                                 f"({world_size} ranks); lower batch_size")
        self.per_rank = per_rank

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation; skip its first ``start`` samples of this rank."""
        self.epoch, self.start = epoch, start

    def order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator()
            g.manual_seed(self.seed + 7919 * self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        if total > len(order):
            order += order[:total - len(order)]
        return order[:total]

    def __iter__(self):
        order = self.order()
        for i in range(self.rank + self.start * self.world_size, len(order), self.world_size):
            yield order[i] if self.keys_only else (order[i], sample_seed(self.seed, self.epoch, i))

    def __len__(self) -> int:
        return max(0, self.per_rank - self.start)


class ShardSampler(Sampler):
    """Evaluation: rank ``r`` of ``w`` takes indices r, r+w, ... (no padding, so nothing is counted twice)."""

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1):
        self.indices = list(range(rank, num_samples, world_size))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)

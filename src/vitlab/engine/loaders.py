"""DataLoaders for training and evaluation, the same for every task.

Training: :class:`~vitlab.data.sampler.SeededSampler` gives every position of an epoch its own
augmentation seed, so batches do not depend on the number of workers, every torchrun rank takes
its share of one global order, and a resumed run continues mid-epoch with the very same samples.
Evaluation: :class:`~vitlab.data.sampler.ShardSampler` splits the set over the ranks without
padding (nothing is counted twice). Unreadable samples are dropped by the collate function and
reported with their file names.

Training workers persist across epochs (no re-spawn and dataset copy per epoch; the sampler runs in
the main process, so the seeded order is unaffected). :class:`PrefetchLoader` copies the next batch to
the device on a side CUDA stream while the current one trains (pinned memory, ``non_blocking``) and can
prepare it there (e.g. :class:`vitlab.data.device_prep.BatchPrep`: uint8 -> normalised, erased).
"""
from __future__ import annotations

from typing import Callable

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
                 pin_memory: bool = False, collate_fn=collate_skipping,
                 persistent_workers: bool = True) -> tuple[DataLoader, SeededSampler]:
    """Shuffled, seeded, drop-last batches of ``batch_size`` (per process); whole optimizer steps per epoch;
    ``persistent_workers`` (with ``workers`` > 0): the worker processes live for the loader's lifetime."""
    sampler = SeededSampler(len(dataset), shuffle=True, seed=seed, rank=dist.rank, world_size=dist.world_size,
                            drop_last=True, batch_size=batch_size * accum_steps,
                            keys_only=not getattr(dataset, "seeded", False))
    g = torch.Generator()
    g.manual_seed(seed)  # the loader draws its worker seeds from here, never from the global RNG (exact resume)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                        drop_last=True, worker_init_fn=_worker_init, generator=g, pin_memory=pin_memory,
                        persistent_workers=bool(persistent_workers and workers), prefetch_factor=4 if workers else None)
    return loader, sampler


def eval_loader(dataset, *, batch_size: int, workers: int, dist: DistInfo, pin_memory: bool = False,
                collate_fn=collate_skipping) -> DataLoader:
    """In-order batches of this rank's shard of ``dataset``."""
    sampler = ShardSampler(len(dataset), dist.rank, dist.world_size)
    g = torch.Generator()
    g.manual_seed(0)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, collate_fn=collate_fn,
                      generator=g, worker_init_fn=_worker_init, pin_memory=pin_memory)


def to_device(obj, device: torch.device, non_blocking: bool = True):
    """Tensors in ``obj`` (nested tuples / lists / dicts) moved to ``device``; anything else as it is."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(o, device, non_blocking) for o in obj)
    if isinstance(obj, dict):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    return obj


class PrefetchLoader:
    """Iterate ``loader`` with each batch already on ``device``; on CUDA the copy of batch i + 1 (from pinned
    memory, ``non_blocking``) and ``prepare`` run on a side stream while batch i is in use (timm's
    ``PrefetchLoader`` idea). ``prepare(batch, index) -> batch`` runs on the device copy (index: the batch's
    position in this pass); elsewhere everything runs in order on the current thread.
    """

    def __init__(self, loader, device: torch.device | str, prepare: Callable | None = None):
        self.loader, self.device, self.prepare = loader, torch.device(device), prepare

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name):  # sampler, batch_size, dataset, ... of the wrapped loader
        if name == "loader":
            raise AttributeError(name)
        return getattr(self.loader, name)

    def _load(self, batch, index: int):
        batch = to_device(batch, self.device)
        return self.prepare(batch, index) if self.prepare is not None else batch

    def __iter__(self):
        if self.device.type != "cuda":
            for i, batch in enumerate(self.loader):
                yield self._load(batch, i)
            return
        stream = torch.cuda.Stream(device=self.device)
        pending = None
        for i, batch in enumerate(self.loader):
            with torch.cuda.stream(stream):
                ready = self._load(batch, i)
            if pending is not None:
                yield pending
            torch.cuda.current_stream(self.device).wait_stream(stream)
            _record_stream(ready, torch.cuda.current_stream(self.device))
            pending = ready
        if pending is not None:
            yield pending


def _record_stream(obj, stream) -> None:
    """Tell the caching allocator that tensors made on the side stream are used on ``stream``."""
    if isinstance(obj, torch.Tensor):
        if obj.is_cuda:
            obj.record_stream(stream)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _record_stream(o, stream)
    elif isinstance(obj, dict):
        for o in obj.values():
            _record_stream(o, stream)

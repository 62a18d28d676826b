"""In-memory array datasets and the seeded-sample protocol used by ``vitlab train``.

A *seeded* dataset accepts either an int index (no randomness needed: evaluation) or an
``(index, seed)`` key from :class:`vitlab.data.sampler.SeededSampler`; the seed drives a
``torch.Generator`` that the transform draws all its randomness from. Augmentation is then a
pure function of (run seed, epoch, position), independent of the number of workers, which
makes ``--resume`` exact.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.utils.data import Dataset


def split_key(key) -> tuple[int, torch.Generator | None]:
    """``idx`` -> (idx, None); ``(idx, seed)`` -> (idx, generator seeded with ``seed``)."""
    if isinstance(key, (tuple, list)):
        idx, seed = key
        g = torch.Generator()
        g.manual_seed(int(seed))
        return int(idx), g
    return int(key), None


class SeededDataset(Dataset):
    """Base class: ``__getitem__`` accepts ``idx`` or ``(idx, seed)`` and calls ``load(idx, generator)``."""

    seeded = True

    def __getitem__(self, key):
        idx, generator = split_key(key)
        if not 0 <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} samples")
        return self.load(idx, generator)

    def load(self, idx: int, generator: torch.Generator | None):
        raise NotImplementedError


class ArrayDataset(SeededDataset):
    """Images held in memory as a uint8 (N, H, W[, C]) array with int labels."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, num_classes: int, transform: Callable | None = None):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        labels = np.asarray(labels, dtype=np.int64)
        check_labels(labels, num_classes)
        self.images, self.labels, self.transform = images, labels, transform
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.images)

    def load(self, idx, generator):
        img = torch.from_numpy(np.ascontiguousarray(self.images[idx]))
        if img.ndim == 3:
            img = img.permute(2, 0, 1)
        img = img.unsqueeze(0) if img.ndim == 2 else img
        if self.transform is not None:
            img = self.transform(img, generator)
        return img, int(self.labels[idx])


def check_labels(labels, num_classes: int) -> None:
    """Clear error for labels outside [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.size == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(f"labels must be in [0, {num_classes - 1}] for {num_classes} classes, found "
                         f"{bad.size} outside that range (e.g. {sorted(set(bad.tolist()))[:5]})")

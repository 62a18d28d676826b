"""Built-in datasets that ship inside installed packages (nothing is downloaded).

* ``animal-mnist``: 10,000 grayscale 28x28 animal silhouettes in 10 classes, stored as gzip-pickled
  NumPy arrays inside the ``animal-mnist`` wheel. The package itself imports TensorFlow, so it is
  never imported: the files are located through the installed distribution's metadata and read
  with an unpickler that only allows NumPy array reconstruction.
* ``digits``: scikit-learn's 1,797 8x8 handwritten digits (values 0..16).

Splits are seeded and *clean*: exact duplicate images are kept on one side of the split
(Animal-MNIST has many), and the split reports how many it moved. :func:`stratified_limit`
takes a subset of a split that keeps every class's share.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that reconstructs NumPy arrays and nothing else (no arbitrary code execution)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            if module.startswith("numpy.core"):
                module = "numpy._core.multiarray" if hasattr(np, "_core") else module
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only NumPy arrays are allowed")


def load_numpy_pickle(data: bytes) -> np.ndarray:
    """Read a pickled NumPy array with :class:`_NumpyOnlyUnpickler`."""
    obj = _NumpyOnlyUnpickler(io.BytesIO(data)).load()
    if not isinstance(obj, np.ndarray):
        raise pickle.UnpicklingError(f"expected a NumPy array, found {type(obj).__name__}")
    return obj


def _animal_mnist_file(name: str) -> Path:
    try:
        dist = metadata.distribution("animal-mnist")
    except metadata.PackageNotFoundError as e:
        raise FileNotFoundError("the built-in Animal-MNIST set needs the 'animal-mnist' wheel: "
                                "pip install --no-deps animal-mnist==0.4 (its TensorFlow dependency is not needed)") from e
    path = Path(dist.locate_file(f"animal_mnist/data/Animal_MNIST/{name}"))
    if not path.is_file():
        raise FileNotFoundError(f"Animal-MNIST data file {path} is missing from the installed wheel")
    return path


def load_animal_mnist() -> tuple[np.ndarray, np.ndarray]:
    """All 10,000 images as uint8 (N, 28, 28) and int64 labels (N,)."""
    images = load_numpy_pickle(gzip.decompress(_animal_mnist_file("animal_data_version_3.gz").read_bytes()))
    labels = load_numpy_pickle(gzip.decompress(_animal_mnist_file("animal_label_version_3.gz").read_bytes()))
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(images) != len(labels):
        raise ValueError(f"Animal-MNIST: {len(images)} images but {len(labels)} labels")
    return images, labels


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 (N, 8, 8) scaled to 0..255 and int64 labels."""
    from sklearn.datasets import load_digits as sk_digits
    d = sk_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return images, d.target.astype(np.int64)


BUILTIN_LOADERS = {"animal-mnist": load_animal_mnist, "digits": load_digits}


@dataclass
class CleanSplit:
    """Indices of a seeded train/held-out split with exact duplicates kept on one side."""
    train: np.ndarray
    held_out: np.ndarray
    moved: int          # held-out images moved to train because an identical image was in train
    duplicate_groups: int


def image_hashes(images: np.ndarray) -> list[bytes]:
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest() for im in images]


def clean_split(images: np.ndarray, held_out: int, seed: int = 0) -> CleanSplit:
    """Seeded split with ``held_out`` images where no held-out image has an exact copy in train.

    Draw a random held-out set; every held-out image whose bytes also occur in the training part
    is moved to train and replaced by the next candidate of the permutation, so identical images
    always end up on the same side. ``moved`` counts the replacements.
    """
    n = len(images)
    if not 0 < held_out < n:
        raise ValueError(f"held_out must be between 1 and {n - 1}, got {held_out}")
    perm = np.random.default_rng(seed).permutation(n)
    hashes = image_hashes(images)
    groups: dict[bytes, list[int]] = {}
    for i, h in enumerate(hashes):
        groups.setdefault(h, []).append(i)
    in_held = np.zeros(n, dtype=bool)
    in_held[perm[:held_out]] = True
    # a group is clean when all its members are on the same side
    moved = 0
    for members in groups.values():
        if len(members) > 1 and in_held[members].any() and not in_held[members].all():
            moved += int(in_held[members].sum())
            in_held[members] = False
    # refill the held-out set from the rest of the permutation with whole duplicate groups
    for i in perm[held_out:]:
        if in_held.sum() >= held_out:
            break
        members = groups[hashes[i]]
        if not in_held[i] and in_held.sum() + len(members) <= held_out:
            in_held[members] = True
    held = np.flatnonzero(in_held)
    train = np.flatnonzero(~in_held)
    dup_groups = sum(1 for m in groups.values() if len(m) > 1)
    return CleanSplit(train=train, held_out=held, moved=moved, duplicate_groups=dup_groups)


def stratified_limit(indices: np.ndarray, labels: np.ndarray, limit: int, seed: int = 0) -> np.ndarray:
    """``limit`` of ``indices`` (sorted) with each class's share of them kept, deterministic for ``seed``.

    Each class's members are put in a seeded random order; member ``j`` of a class with ``n``
    members gets the key ``(j + 0.5) / n`` and the ``limit`` smallest keys are kept (ties go to
    the lower class), i.e. the classes are interleaved in proportion to their sizes.
    """
    indices = np.asarray(indices)
    if limit >= len(indices):
        return np.sort(indices)
    cls = np.asarray(labels)[indices]
    rng = np.random.default_rng(seed)
    picked, keys, order = [], [], []
    for c in np.unique(cls):
        members = indices[cls == c]
        members = members[rng.permutation(len(members))]
        picked.append(members)
        keys.append((np.arange(len(members)) + 0.5) / len(members))
        order.append(np.full(len(members), c))
    picked, keys, order = np.concatenate(picked), np.concatenate(keys), np.concatenate(order)
    keep = np.lexsort((order, keys))[:limit]
    return np.sort(picked[keep])

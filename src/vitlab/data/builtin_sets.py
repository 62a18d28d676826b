"""Registers the datasets ``vitlab train/eval`` know by name: ``animal-mnist``, ``digits`` and ``folder``.

* ``animal-mnist`` / ``digits``: the built-in arrays of :mod:`vitlab.data.builtin`, split with
  :func:`~vitlab.data.builtin.clean_split` (``data.held_out`` images, exact duplicates on one
  side only; ``info["moved"]`` says how many held-out images it moved). Grayscale, one channel,
  normalised with the training set's own mean/std.
* ``folder``: ``--data folder:PATH`` (or ``--data PATH``). ``PATH/train`` + ``PATH/val`` when
  both exist, otherwise a seeded split of ``PATH`` with ``data.val_fraction`` (default 0.1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .builtin import BUILTIN_LOADERS, clean_split
from .datasets import ArrayDataset
from .folder import ImageFolder, find_classes, scan_images
from .registry import DataRequest, DatasetBundle, register_dataset

CLASS_NAMES = {
    "animal-mnist": ["class_%d" % i for i in range(10)],
    "digits": [str(i) for i in range(10)],
}
DEFAULT_HELD_OUT = {"animal-mnist": 2000, "digits": 360}


def _builtin(name: str):
    def build(req: DataRequest) -> DatasetBundle:
        images, labels = BUILTIN_LOADERS[name]()
        held_out = int(req.options.get("held_out", DEFAULT_HELD_OUT[name]))
        split = clean_split(images, held_out, seed=int(req.options.get("split_seed", 0)))
        train_idx = split.train
        limit = req.options.get("train_limit")
        if limit:
            train_idx = train_idx[: int(limit)]
        train_imgs = images[train_idx]
        mean = float(train_imgs.mean() / 255.0)
        std = float(train_imgs.std() / 255.0)
        n_cls = int(labels.max()) + 1
        names = CLASS_NAMES.get(name) or [str(i) for i in range(n_cls)]
        train = ArrayDataset(train_imgs, labels[train_idx], n_cls, req.train_transform) \
            if "train" in req.splits else None
        val = ArrayDataset(images[split.held_out], labels[split.held_out], n_cls, req.eval_transform)
        info = {"train_images": len(train_idx), "held_out_images": len(split.held_out),
                "duplicates_moved_to_train": split.moved, "duplicate_groups": split.duplicate_groups}
        return DatasetBundle(train=train, val=val, class_names=names, input_kind="image", in_chans=1,
                             mean=(mean,), std=(std,), info=info)
    return build


def build_folder(req: DataRequest) -> DatasetBundle:
    root = req.root or req.options.get("root")
    if not root:
        raise ValueError("the folder dataset needs a path: --data folder:PATH or --data PATH")
    root = Path(root)
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = find_classes(root / "train")
        val_classes = find_classes(root / "val")
        if val_classes != classes:
            raise ValueError(f"{root}/val has classes {val_classes[:5]}... but {root}/train has {classes[:5]}...; "
                             f"both need the same class folders")
        train = ImageFolder(root / "train", req.train_transform, classes) if "train" in req.splits else None
        val = ImageFolder(root / "val", req.eval_transform, classes)
    else:
        classes = find_classes(root)
        n = len(scan_images(root, classes))
        frac = float(req.options.get("val_fraction", 0.1))
        if not 0 < frac < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {frac}")
        perm = np.random.default_rng(int(req.options.get("split_seed", 0))).permutation(n)
        n_val = max(1, int(round(n * frac)))
        train = ImageFolder(root, req.train_transform, classes, np.sort(perm[n_val:])) \
            if "train" in req.splits else None
        val = ImageFolder(root, req.eval_transform, classes, np.sort(perm[:n_val]))
    info = {"root": str(root), "train_images": len(train) if train is not None else None, "val_images": len(val)}
    return DatasetBundle(train=train, val=val, class_names=classes, input_kind="image", info=info)


register_dataset("animal-mnist", _builtin("animal-mnist"), help="10 animal silhouette classes, 28x28 grayscale")
register_dataset("digits", _builtin("digits"), help="scikit-learn handwritten digits, 8x8 grayscale")
register_dataset("folder", build_folder, help="an image folder: PATH/<class>/*.jpg (or PATH/train + PATH/val)")

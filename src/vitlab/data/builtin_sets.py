"""The image datasets known by name (see :data:`vitlab.data.registry.BUILTIN_DATASETS`): ``animal-mnist``,
``digits``, ``folder`` and ``images``.

* ``animal-mnist`` / ``digits``: the built-in arrays of :mod:`vitlab.data.builtin`, split with
  :func:`~vitlab.data.builtin.clean_split` (``data.held_out`` images, exact duplicates on one
  side only; ``info["moved"]`` says how many held-out images it moved). Grayscale, one channel,
  normalised with the training set's own mean/std. ``data.train_limit: N`` keeps N training
  images *stratified*: every class keeps its share of the full training split (a seeded random
  order within each class, seeded by ``data.split_seed``, interleaved across classes), so a
  small limit still trains on every class.
* ``folder``: ``--data folder:PATH`` (or ``--data PATH``). Which images train and which evaluate:

  - ``PATH/train`` + ``PATH/val`` both exist: those two folders.
  - only ``PATH/val`` (a folder of class folders): it is the evaluation set; training from it
    is an error (there is no ``PATH/train``).
  - only ``PATH/train`` (a folder of class folders): it is treated as the plain class folder
    below.
  - a plain class folder ``PATH/<class>/*.jpg``: a seeded split (``data.split_seed``) with
    ``data.val_fraction`` (default 0.1) of the images held out for evaluation. When only the
    evaluation set is requested and ``data.eval_whole_folder`` is true (``vitlab eval --data
    PATH`` sets it), every image of the folder is evaluated instead.

  ``train`` / ``val`` count as split folders only when they hold sub-folders and no images of
  their own; a class that happens to be called ``val`` stays a class.
  ``info["val_source"]`` says which rule chose the evaluation set.
* ``images``: ``--data images:PATH``, every image file under PATH without labels (self-supervised
  pretraining): the training set only.
* ``texture-scenes``: the built-in segmentation scenes (:mod:`vitlab.data.synthetic_scenes`, 400 training
  and 100 validation scenes of 128 px, written on first use; ``texture-scenes:PATH`` for another copy) as
  an image set: RGB, each scene labelled by the texture that covers most of it (image-level k-NN and
  pretraining; the segmentation task and the dense probe read the masks themselves).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitlab.errors import DataError

from .builtin import BUILTIN_LOADERS, clean_split, stratified_limit
from .datasets import ArrayDataset
from .folder import IMAGE_EXTENSIONS, ImageFolder, UnlabelledImageFolder, find_classes, scan_images
from .registry import DataRequest, DatasetBundle

CLASS_NAMES = {
    "animal-mnist": ["class_%d" % i for i in range(10)],
    "digits": [str(i) for i in range(10)],
}
DEFAULT_HELD_OUT = {"animal-mnist": 2000, "digits": 360}


def _count(value, key: str) -> int:
    try:
        n = int(str(value))
    except ValueError:
        n = -1
    if isinstance(value, bool) or n < 0:
        raise DataError(f"{key} must be a whole number of images, got {value!r}")
    return n


def _builtin(name: str):
    def build(req: DataRequest) -> DatasetBundle:
        images, labels = BUILTIN_LOADERS[name]()
        held_out = int(req.options.get("held_out", DEFAULT_HELD_OUT[name]))
        split = clean_split(images, held_out, seed=int(req.options.get("split_seed", 0)))
        train_idx = split.train
        limit = req.options.get("train_limit")
        limit = 0 if limit is None or limit == "" else _count(limit, "data.train_limit")
        if limit:  # 0: no limit
            train_idx = stratified_limit(train_idx, labels, limit, seed=int(req.options.get("split_seed", 0)))
        train_imgs = images[train_idx]
        mean = float(train_imgs.mean() / 255.0)
        std = float(train_imgs.std() / 255.0)
        n_cls = int(labels.max()) + 1
        names = CLASS_NAMES.get(name) or [str(i) for i in range(n_cls)]
        train = ArrayDataset(train_imgs, labels[train_idx], n_cls, req.train_transform) \
            if "train" in req.splits else None
        val = ArrayDataset(images[split.held_out], labels[split.held_out], n_cls, req.eval_transform)
        info = {"train_images": len(train_idx), "held_out_images": len(split.held_out),
                "train_classes": int(len(np.unique(labels[train_idx]))),
                "duplicates_moved_to_train": split.moved, "duplicate_groups": split.duplicate_groups}
        return DatasetBundle(train=train, val=val, class_names=names, input_kind="image", in_chans=1,
                             mean=(mean,), std=(std,), info=info)
    return build


def _is_split_folder(path: Path) -> bool:
    """``path`` is a ``train``/``val`` folder of class folders (not a class folder that happens to have that name)."""
    if not path.is_dir():
        return False
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    has_dirs = any(p.is_dir() for p in entries)
    has_images = any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in entries)
    return has_dirs and not has_images


def build_folder(req: DataRequest) -> DatasetBundle:
    root = req.root or req.options.get("root")
    if not root:
        raise DataError("the folder dataset needs a path: --data folder:PATH or --data PATH")
    root = given = Path(root)
    want_train = "train" in req.splits
    has_train, has_val = (root / "train").is_dir(), (root / "val").is_dir()
    if has_train and has_val:
        classes = find_classes(root / "train")
        val_classes = find_classes(root / "val")
        if val_classes != classes:
            raise DataError(f"{root}/val has classes {val_classes[:5]}... but {root}/train has {classes[:5]}...; "
                            f"both need the same class folders")
        train = ImageFolder(root / "train", req.train_transform, classes) if want_train else None
        val = ImageFolder(root / "val", req.eval_transform, classes)
        source = f"{root / 'val'}"
    elif has_val and _is_split_folder(root / "val"):
        if want_train:
            raise DataError(f"{root} has a val/ folder but no train/ folder: training needs {root}/train/<class>/ "
                            f"(or point --data at a plain class folder for a seeded split)")
        classes = find_classes(root / "val")
        train, val = None, ImageFolder(root / "val", req.eval_transform, classes)
        source = f"{root / 'val'}"
    else:
        if has_train and _is_split_folder(root / "train"):
            root = root / "train"
        classes = find_classes(root)
        samples = scan_images(root, classes)
        n = len(samples)
        if not want_train and req.options.get("eval_whole_folder"):
            train, val = None, ImageFolder(root, req.eval_transform, classes, samples=samples)
            source = f"all of {root}"
        else:
            frac = float(req.options.get("val_fraction", 0.1))
            if not 0 < frac < 1:
                raise DataError(f"data.val_fraction must be in (0, 1), got {frac}")
            seed = int(req.options.get("split_seed", 0))
            perm = np.random.default_rng(seed).permutation(n)
            n_val = max(1, int(round(n * frac)))
            train = ImageFolder(root, req.train_transform, classes, np.sort(perm[n_val:]), samples=samples) \
                if want_train else None
            val = ImageFolder(root, req.eval_transform, classes, np.sort(perm[:n_val]), samples=samples)
            source = f"seeded split of {root} (val_fraction={frac}, split_seed={seed})"
    info = {"root": str(given), "train_images": len(train) if train is not None else None, "val_images": len(val),
            "val_source": source}
    return DatasetBundle(train=train, val=val, class_names=classes, input_kind="image", info=info)


build_animal_mnist = _builtin("animal-mnist")
build_digits = _builtin("digits")


def build_unlabelled_images(req: DataRequest) -> DatasetBundle:
    root = req.root or req.options.get("root")
    if not root:
        raise DataError("the images dataset needs a path: --data images:PATH")
    train = UnlabelledImageFolder(root, req.train_transform)
    return DatasetBundle(train=train, val=None, class_names=[], input_kind="image",
                         info={"root": str(root), "train_images": len(train)})


def build_texture_scene_images(req: DataRequest) -> DatasetBundle:
    from .synthetic_scenes import CLASS_NAMES, dominant_class, ensure_texture_scenes, read_split_arrays
    root = ensure_texture_scenes(req.root or req.options.get("root"))
    n = len(CLASS_NAMES)
    train_imgs, train_masks = read_split_arrays(root, "training")
    val_imgs, val_masks = read_split_arrays(root, "validation")
    mean = tuple(float(v) for v in train_imgs.reshape(-1, 3).mean(0) / 255.0)
    std = tuple(float(v) for v in train_imgs.reshape(-1, 3).std(0) / 255.0)
    train = ArrayDataset(train_imgs, dominant_class(train_masks, n), n, req.train_transform) \
        if "train" in req.splits else None
    val = ArrayDataset(val_imgs, dominant_class(val_masks, n), n, req.eval_transform)
    info = {"root": str(root), "train_images": len(train_imgs), "held_out_images": len(val_imgs),
            "label": "dominant texture"}
    return DatasetBundle(train=train, val=val, class_names=list(CLASS_NAMES), input_kind="image", in_chans=3,
                         mean=mean, std=std, info=info)

"""Image-folder datasets read with Pillow (JPEG, PNG, WebP, BMP, GIF, TIFF, PPM/PGM).

* :class:`ImageFolder`: ``root/<class>/<image>``. Classes are the sub-folder names in sorted
  order. A class folder without images is an error (it would silently shift every label after
  it), and so is a class folder none of whose files Pillow can open: at construction each class
  is probed file by file (header only, no decode) until one opens, so a healthy folder costs one
  header read per class.
* :class:`UnlabelledImageFolder`: every image under ``root``, recursively, with target ``-1``
  (self-supervised pretraining).

Images that cannot be decoded at load time are skipped: the sample comes back as a
:class:`Skipped` (the file and Pillow's message) and :func:`collate_skipping` drops it and
returns the ``"path: reason"`` lines, so the run reports which files it skipped instead of
crashing.

:func:`load_image` scales high-bit-depth images to 8 bits before converting them to the
requested mode (:func:`decoded`): 16-bit data (``I;16*``, and ``I`` whose values fit in 16 bits) by 1/257, larger
``I`` values by their maximum, float ``F`` data in [0, 1] by 255 (and above 1 by its maximum).

A training transform whose random-resized crop has ``draft=True`` (:func:`vitlab.data.jpeg.draft_plan`)
decodes each JPEG itself: the crop box from the header size, the file at the largest reduction the
box allows (:mod:`vitlab.data.jpeg`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from torch.utils.data import default_collate

from vitlab.errors import DataError

from .datasets import SeededDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
# what Pillow raises for truncated, corrupt or unsupported files
UNREADABLE_ERRORS = (OSError, ValueError, SyntaxError)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
_HIGH_DEPTH_MODES = _SIXTEEN_BIT_MODES + ("I", "F")


@dataclass(frozen=True)
class Skipped:
    """A sample that could not be read: the file and why."""
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def find_classes(root: str | os.PathLike) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root} has no class sub-folders; expected {root}/<class_name>/<image files>")
    return classes


def _image_files(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def scan_images(root: str | os.PathLike, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) for every image file, sorted; raises for a class folder without images."""
    root = Path(root)
    samples, empty = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise DataError(f"class folder {folder} is missing (classes: {', '.join(classes)})")
        files = _image_files(folder)
        if not files:
            empty.append(name)
        samples += [(f, label) for f in files]
    if empty:
        raise DataError(f"class folder(s) with no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}: "
                        f"{', '.join(empty)}; remove them or add images")
    return samples


def scan_all_images(root: str | os.PathLike) -> list[str]:
    """Every image file under ``root``, recursively and sorted; hidden files and folders are left out."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    files = [f for f in _image_files(root)
             if not any(part.startswith(".") for part in Path(f).relative_to(root).parts)]
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {root}")
    return files


def opens(path: str) -> str | None:
    """None when Pillow can open ``path`` and parse its header (no decode), else the error text."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            im.verify()
    except UNREADABLE_ERRORS as e:
        return f"{type(e).__name__}: {e}"
    return None


def first_readable(paths: Iterable[str]) -> tuple[str | None, str | None]:
    """(first path that :func:`opens`, None) or (None, the last error) when none does."""
    error = None
    for p in paths:
        error = opens(p)
        if error is None:
            return p, None
    return None, error


def check_readable_classes(root: str | os.PathLike, classes: list[str], samples: list[tuple[str, int]]) -> None:
    """DataError naming every class folder in which no file opens (probing stops at the first that does)."""
    by_label: dict[int, list[str]] = {}
    for path, label in samples:
        by_label.setdefault(label, []).append(path)
    bad = []
    for label, paths in sorted(by_label.items()):
        found, error = first_readable(paths)
        if found is None:
            bad.append(f"{Path(root) / classes[label]} ({len(paths)} files, e.g. {paths[-1]}: {error})")
    if bad:
        raise DataError(f"class folder(s) in which no image file can be opened: {'; '.join(bad)}; "
                        f"fix or remove them")


def _to_8bit(arr: np.ndarray, mode: str) -> np.ndarray:
    """High-bit-depth pixel values -> uint8, scaled as the module docstring says."""
    a = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    hi = float(a.max()) if a.size else 0.0
    if mode in _SIXTEEN_BIT_MODES or (mode == "I" and hi <= 65535):
        a = a / 257.0
    elif mode == "I":
        a = a * (255.0 / hi)
    else:  # "F"
        a = a * (255.0 if hi <= 1.0 else 255.0 / hi)
    return np.clip(np.round(a), 0, 255).astype(np.uint8)


def load_image(path: str, mode: str = "RGB") -> np.ndarray:
    """The image at ``path`` as an (H, W[, C]) array in ``mode``.

    16-bit, 32-bit integer and float images are scaled to 8 bits first when ``mode`` is an 8-bit
    mode ("RGB", "L", ...); asking for "I", "F" or "I;16" returns Pillow's own conversion.
    """
    from PIL import Image
    with Image.open(path) as im:
        return np.array(decoded(im, mode))


def decoded(im, mode: str = "RGB"):
    """An opened Pillow image decoded and converted to ``mode`` (high-bit-depth data scaled to 8 bits first)."""
    from PIL import Image
    im.load()
    if im.mode in _HIGH_DEPTH_MODES and mode not in _HIGH_DEPTH_MODES:
        im = Image.fromarray(_to_8bit(np.asarray(im), im.mode), mode="L")
    return im if im.mode == mode else im.convert(mode)  # convert() to the same mode would only copy


def _load_sample(path: str, label: int, mode: str, transform: Callable | None, generator):
    from .jpeg import draft_plan, load_resized_crop
    plan = draft_plan(transform)
    try:
        if plan is not None:  # the transform's crop decodes the file (JPEG draft mode when the box allows)
            crop, transform = plan
            img = load_resized_crop(path, crop, generator, mode=mode).image
        else:
            img = torch.from_numpy(load_image(path, mode))
            img = img.permute(2, 0, 1) if img.ndim == 3 else img.unsqueeze(0)
    except UNREADABLE_ERRORS as e:  # Pillow raises these for truncated/corrupt files
        return Skipped(path, f"{type(e).__name__}: {e}")
    if transform is not None:
        img = transform(img, generator)
    return img, label


class ImageFolder(SeededDataset):
    """``root/<class>/<image>``; ``indices`` selects a subset (for seeded splits).

    ``samples`` may pass the result of :func:`scan_images` for ``root`` and ``classes`` when the
    caller has it already (it is not scanned again).
    """

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, classes: list[str] | None = None,
                 indices=None, mode: str = "RGB", samples: list[tuple[str, int]] | None = None):
        self.root = Path(root)
        self.classes = classes or find_classes(root)
        all_samples = samples if samples is not None else scan_images(root, self.classes)
        check_readable_classes(self.root, self.classes, all_samples)
        self.samples = all_samples if indices is None else [all_samples[i] for i in indices]
        self.transform, self.mode = transform, mode
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, idx, generator):
        path, label = self.samples[idx]
        return _load_sample(path, label, self.mode, self.transform, generator)


class UnlabelledImageFolder(SeededDataset):
    """Every image file under ``root`` (recursively, sorted), as ``(image, -1)``; for self-supervised pretraining.

    An empty folder, or one in which no file opens, is a :class:`~vitlab.errors.DataError`.
    """

    num_classes = 0

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, mode: str = "RGB"):
        self.root = Path(root)
        self.files = scan_all_images(self.root)
        found, error = first_readable(self.files)
        if found is None:
            raise DataError(f"none of the {len(self.files)} image files under {self.root} can be opened "
                            f"(e.g. {self.files[-1]}: {error})")
        self.classes: list[str] = []
        self.transform, self.mode = transform, mode

    @property
    def samples(self) -> list[tuple[str, int]]:
        return [(f, -1) for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def load(self, idx, generator):
        return _load_sample(self.files[idx], -1, self.mode, self.transform, generator)


def split_skipped(batch) -> tuple[list, list[str]]:
    """``(kept samples, skipped descriptions)``: :class:`Skipped` ones as ``"path: reason"``, ``None`` ones
    as ``"unreadable sample"`` (datasets that do not name their files)."""
    kept, skipped = [], []
    for b in batch:
        if b is None:
            skipped.append("unreadable sample")
        elif isinstance(b, Skipped):
            skipped.append(str(b))
        else:
            kept.append(b)
    return kept, skipped


def collate_skipping(batch):
    """Collate ``(input, target)`` samples, dropping unreadable ones: -> (inputs, targets, skipped).

    ``skipped`` lists ``"path: reason"`` for every :class:`Skipped` sample and ``"unreadable
    sample"`` for every ``None`` (datasets that do not name their files); inputs and targets are
    None when nothing is left. Inputs may be nested (e.g. a list of crops); they are collated
    with ``torch.utils.data.default_collate``.
    """
    kept, skipped = split_skipped(batch)
    if not kept:
        return None, None, skipped
    collated = default_collate(kept)
    if not isinstance(collated, (tuple, list)) or len(collated) != 2:
        raise TypeError(f"collate_skipping expects (input, target) samples, got {type(kept[0]).__name__}"
                        + (f" of length {len(kept[0])}" if isinstance(kept[0], (tuple, list)) else ""))
    x, y = collated
    return x, y, skipped

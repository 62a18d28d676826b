"""Image-folder datasets: ``root/<class>/<image>`` read with Pillow (JPEG, PNG, WebP, BMP, GIF, TIFF).

Classes are the sub-folder names in sorted order. A class folder without images is an error
(it would silently shift every label after it). Images that cannot be decoded are skipped: the
sample comes back as ``None`` and :func:`collate_skipping` drops it and counts it, so the run
reports how many it skipped instead of crashing.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import default_collate

from .datasets import SeededDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")


def find_classes(root: str | os.PathLike) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected {root}/<class_name>/<image files>")
    return classes


def scan_images(root: str | os.PathLike, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) for every image file, sorted; raises for a class folder without images."""
    root = Path(root)
    samples, empty = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            raise ValueError(f"class folder {folder} is missing (classes: {', '.join(classes)})")
        files = sorted(str(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not files:
            empty.append(name)
        samples += [(f, label) for f in files]
    if empty:
        raise ValueError(f"class folder(s) with no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}: "
                         f"{', '.join(empty)}; remove them or add images")
    return samples


def load_image(path: str, mode: str = "RGB"):
    from PIL import Image
    with Image.open(path) as im:
        im.load()
        return np.asarray(im.convert(mode))


class ImageFolder(SeededDataset):
    """``root/<class>/<image>``; ``indices`` selects a subset (for seeded splits)."""

    def __init__(self, root: str | os.PathLike, transform: Callable | None = None, classes: list[str] | None = None,
                 indices=None, mode: str = "RGB"):
        self.root = Path(root)
        self.classes = classes or find_classes(root)
        all_samples = scan_images(root, self.classes)
        self.samples = all_samples if indices is None else [all_samples[i] for i in indices]
        self.transform, self.mode = transform, mode
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, idx, generator):
        path, label = self.samples[idx]
        try:
            img = torch.from_numpy(load_image(path, self.mode))
        except (OSError, ValueError, SyntaxError):  # Pillow raises these for truncated/corrupt files
            return None
        img = img.permute(2, 0, 1) if img.ndim == 3 else img.unsqueeze(0)
        if self.transform is not None:
            img = self.transform(img, generator)
        return img, label


def collate_skipping(batch):
    """Collate ``(input, target)`` samples, dropping ``None`` (unreadable) ones: -> (inputs, targets, skipped)."""
    kept = [b for b in batch if b is not None]
    skipped = len(batch) - len(kept)
    if not kept:
        return None, None, skipped
    x, y = default_collate(kept)
    return x, y, skipped

"""Image sets for self-supervised pretraining and feature evaluation, held in memory as uint8.

``load_image_set("animal-mnist" | "digits" | FOLDER, size)`` returns a :class:`ImageSet`:
uint8 images (N, C, S, S), labels (or None) and a duplicate-free train / held-out split for
k-NN and linear evaluation. A folder is read recursively; when its images sit in one sub-folder
per class, the sub-folder names are the labels (ImageNet layout), otherwise there are none.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.data.builtin import BUILTIN_LOADERS, clean_split

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class ImageSet:
    images: torch.Tensor            # uint8 (N, C, S, S)
    labels: torch.Tensor | None     # int64 (N,) or None
    train_idx: torch.Tensor         # pretraining images and the k-NN bank
    held_out_idx: torch.Tensor      # k-NN / linear-probe queries (empty without labels)
    class_names: list[str] | None
    name: str

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def floats(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        """Images in [0, 1] as float32 (N, C, S, S)."""
        x = self.images if idx is None else self.images[idx]
        return x.float().div_(255.0)


def load_image_set(source: str, size: int | None = None, held_out: int = 2000, seed: int = 0) -> ImageSet:
    """Built-in name or image folder; ``size`` resizes folder images to ``size x size`` (built-ins keep theirs)."""
    if source in BUILTIN_LOADERS:
        images, labels = BUILTIN_LOADERS[source]()
        held_out = min(held_out, len(images) // 5)
        split = clean_split(images, held_out, seed)
        return ImageSet(torch.from_numpy(images).unsqueeze(1).contiguous(), torch.from_numpy(labels),
                        torch.from_numpy(split.train), torch.from_numpy(split.held_out), None, source)
    path = Path(source)
    if not path.is_dir():
        raise FileNotFoundError(f"--data must be one of {sorted(BUILTIN_LOADERS)} or an image folder; "
                                f"{source!r} is neither")
    return _load_folder(path, size or 256, held_out, seed)


def _load_folder(path: Path, size: int, held_out: int, seed: int) -> ImageSet:
    from PIL import Image
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) found under {path}")
    parents = sorted({p.parent.relative_to(path).as_posix() for p in files})
    labelled = len(parents) > 1 and all(p != "." for p in parents)
    arrays = []
    for f in files:
        with Image.open(f) as im:
            arrays.append(np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    n = len(images)
    if labelled:
        classes = parents
        labels = torch.tensor([classes.index(f.parent.relative_to(path).as_posix()) for f in files])
        split = clean_split(images.numpy(), min(held_out, max(1, n // 5)), seed) if n >= 2 else None
        train, held = torch.from_numpy(split.train), torch.from_numpy(split.held_out)
    else:
        classes, labels = None, None
        train, held = torch.arange(n), torch.zeros(0, dtype=torch.long)
    return ImageSet(images, labels, train, held, classes, path.name)


def eval_batch(images_uint8: torch.Tensor, size: int, mean, std, in_chans: int) -> torch.Tensor:
    """Whole images resized to ``size`` (bilinear) and normalised: the evaluation view."""
    from vitlab.data.multicrop import normalize_images
    x = images_uint8.float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return normalize_images(x, mean, std, in_chans)

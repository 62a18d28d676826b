"""Semantic-segmentation folders in the ADE20K layout and their augmentations (pure torch + Pillow).

Layout::

    root/images/<split>/<name>.jpg|.png      RGB images
    root/annotations/<split>/<name>.png      label maps (one channel, 8-bit or palette indices)

``split`` is ``training``/``validation`` (``train``/``val`` are accepted). With
``reduce_zero_label=True`` (ADE20K) label 0 ("other") becomes the ignore index 255 and every other
label c becomes c - 1. Bad files raise errors naming them: a missing label file, an image/label
size mismatch, a label value outside ``[0, num_classes)`` other than the ignore index.

Other benchmark layouts (COCO-Stuff-10K, PASCAL-Context 59/60, ADE20K with its class names) are
described in :mod:`vitlab.data.seg_layouts`; ``layout=`` or ``"layout"`` in ``root/dataset.json`` picks
one. ``dataset.json`` (checked by :mod:`vitlab.data.dataset_meta`) may also give ``classes``,
``palette``, ``reduce_zero_label`` and ``ignore_index``; arguments passed here win over it, and it
wins over the layout's defaults.

Training augmentation follows mmseg's pipeline: random rescale (ratio range around a base
scale), random crop (with an optional cap on the share of one class), horizontal flip,
photometric distortion, normalisation, padding to the crop size with the ignore label.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.errors import DataError
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD

from .dataset_meta import read_dataset_json
from .datasets import SeededDataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
SPLIT_ALIASES = {"train": "training", "val": "validation", "test": "validation"}


class SegmentationDataError(DataError):
    """A segmentation file is missing or malformed; the message names the file."""


def _split_dir(root: Path, kind: str, split: str) -> Path:
    for name in (split, SPLIT_ALIASES.get(split, split)):
        if (root / kind / name).is_dir():
            return root / kind / name
    raise FileNotFoundError(f"{root / kind / split} does not exist: expected the ADE20K layout "
                            f"<root>/images/<split>/ and <root>/annotations/<split>/")


def read_label(path: Path) -> np.ndarray:
    """A label map as (H, W) int64; palette PNGs give their indices, 16-bit PNGs their values."""
    from PIL import Image
    with Image.open(path) as im:
        if im.mode not in ("L", "P", "I", "I;16"):
            raise SegmentationDataError(f"{path}: label maps must be single-channel (mode L, P or I), got mode "
                                        f"{im.mode}")
        return np.asarray(im, dtype=np.int64)


def read_image(path: Path) -> np.ndarray:
    """An RGB image as (H, W, 3) uint8 (16-bit images scaled to 8 bits)."""
    from .folder import load_image
    return load_image(str(path), "RGB")


@dataclass
class SegAugment:
    """mmseg-style train pipeline on (3, H, W) float images in [0, 255] and (H, W) int64 labels."""
    crop_size: int = 512
    scale: int | None = None          # short side before the random ratio; None: keep the image's size
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255

    def __call__(self, img: torch.Tensor, label: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
        H, W = img.shape[-2:]
        base = self.scale or min(H, W)
        ratio = rng.uniform(*self.ratio_range)
        factor = base * ratio / min(H, W)
        size = (max(1, round(H * factor)), max(1, round(W * factor)))
        img = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False)[0]
        label = F.interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0].long()
        img, label = self._crop(img, label, rng)
        if rng.random() < self.flip_prob:
            img, label = img.flip(-1), label.flip(-1)
        if self.photometric:
            img = photometric_distortion(img, rng)
        return img, label

    def _crop(self, img, label, rng):
        H, W = img.shape[-2:]
        c = self.crop_size
        for _ in range(10):  # mmseg: retry crops where one class covers more than cat_max_ratio
            y, x = rng.randint(0, max(H - c, 0)), rng.randint(0, max(W - c, 0))
            crop = label[y:y + c, x:x + c]
            counts = torch.bincount(crop[crop != self.ignore_index].flatten())
            counts = counts[counts > 0]
            if self.cat_max_ratio >= 1 or (len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio):
                break
        return img[:, y:y + c, x:x + c], crop


def photometric_distortion(img: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """Random brightness (+-32), contrast (0.5-1.5), saturation (0.5-1.5) on a [0, 255] image, each p=0.5."""
    if rng.random() < 0.5:
        img = img + rng.uniform(-32, 32)
    if rng.random() < 0.5:
        img = img * rng.uniform(0.5, 1.5)
    if rng.random() < 0.5:
        gray = (img * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
        img = gray + (img - gray) * rng.uniform(0.5, 1.5)
    return img.clamp(0, 255)


class SegmentationFolder(SeededDataset):
    """A segmentation folder. Items are ``(image (3, H, W) float normalised, label (H, W) int64)``.

    ``augment`` (a :class:`SegAugment`) makes it a training set: crops are padded to the crop size
    with the ignore label, and the augmentation of an ``(index, seed)`` key follows that seed (the
    seeded-sample protocol of :class:`~vitlab.data.datasets.SeededDataset`: the same crops whatever
    the number of workers, exact resume). ``num_classes`` (or the classes of ``dataset.json`` or of the
    layout) enables label checks. ``reduce_zero_label`` / ``ignore_index`` / ``layout`` None: from
    ``dataset.json``, else the layout's default, else False / 255 / the ADE20K-style folder.
    ``meta`` is the effective metadata (layout defaults, then ``dataset.json``); ``palette`` its colours.
    """

    def __init__(self, root, split: str = "training", num_classes: int | None = None,
                 reduce_zero_label: bool | None = None, augment: SegAugment | None = None, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, ignore_index: int | None = None, class_names: list[str] | None = None,
                 layout: str | None = None, palette=None):
        from .seg_layouts import find_pairs, layout_meta
        self.root = Path(root)
        meta = read_dataset_json(self.root)
        self.layout = layout or meta.get("layout")
        self.meta = layout_meta(self.layout, meta)
        self.class_names = list(class_names or self.meta.get("classes") or [])
        self.num_classes = num_classes or len(self.class_names) or None
        if self.class_names and self.num_classes != len(self.class_names):
            raise ValueError(f"{len(self.class_names)} class names for num_classes={self.num_classes}")
        if not self.class_names and self.num_classes:
            self.class_names = [str(i) for i in range(self.num_classes)]
        self.palette = palette or self.meta.get("palette")
        if reduce_zero_label is None:
            reduce_zero_label = bool(self.meta.get("reduce_zero_label", False))
        self.reduce_zero_label = reduce_zero_label
        self.ignore_index = int(self.meta.get("ignore_index", 255) if ignore_index is None else ignore_index)
        self.augment = augment
        self.mean = torch.tensor(mean).view(3, 1, 1) * 255
        self.std = torch.tensor(std).view(3, 1, 1) * 255
        self.images, self.labels = find_pairs(self.layout, self.root, split)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw (3, H, W) float image in [0, 255] and checked (H, W) int64 label (zero label reduced)."""
        img = read_image(self.images[index])
        if self.labels[index].suffix.lower() == ".mat":
            from .seg_layouts import read_coco_stuff_mat
            label = read_coco_stuff_mat(self.labels[index])
        else:
            label = read_label(self.labels[index])
        if img.shape[:2] != label.shape:
            raise SegmentationDataError(f"{self.labels[index]}: label size {label.shape[1]}x{label.shape[0]} differs "
                                        f"from image {self.images[index].name} size {img.shape[1]}x{img.shape[0]}")
        if self.reduce_zero_label:
            label = np.where(label == 0, self.ignore_index, label - 1)
            label[label == self.ignore_index - 1] = self.ignore_index  # mmseg: 255 -> 254 -> ignore
        if self.num_classes:
            bad = (label != self.ignore_index) & ((label < 0) | (label >= self.num_classes))
            if bad.any():
                raise SegmentationDataError(
                    f"{self.labels[index]}: label value {int(label[bad][0])} outside [0, {self.num_classes}) "
                    f"(after reduce_zero_label={self.reduce_zero_label}; ignore index {self.ignore_index})")
        return torch.from_numpy(img.copy()).permute(2, 0, 1).float(), torch.from_numpy(np.ascontiguousarray(label))

    def load(self, index: int, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        img, label = self.read(index)
        if self.augment is None:
            return (img - self.mean) / self.std, label
        seed = int(torch.randint(2 ** 62, (1,), generator=generator)) if generator is not None else index
        img, label = self.augment(img, label, random.Random(seed))
        img = (img - self.mean) / self.std
        c = self.augment.crop_size
        ph, pw = max(c - img.shape[-2], 0), max(c - img.shape[-1], 0)
        if ph or pw:  # pad after normalising (value 0 = the mean colour), labels with the ignore index
            img = F.pad(img, (0, pw, 0, ph), value=0.0)
            label = F.pad(label, (0, pw, 0, ph), value=self.ignore_index)
        return img, label

    def denormalize(self, img: torch.Tensor) -> torch.Tensor:
        """Back to a uint8 (3, H, W) image."""
        return (img * self.std + self.mean).clamp(0, 255).round().to(torch.uint8)

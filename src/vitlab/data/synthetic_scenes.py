"""A built-in semantic-segmentation set: texture-mosaic scenes with exact masks (nothing is downloaded).

Each scene is a random layout — a Voronoi partition or polygons over a background — whose regions
are filled with patches cut (random position, scale and brightness) from real photographs and
textures shipped inside installed packages: scikit-image's ``brick``, ``grass``, ``gravel``,
``coffee``, ``chelsea`` (cat fur) and ``hubble_deep_field``, and scikit-learn's sample photos
``china`` and ``flower``. The label map is the layout itself, so masks are exact; the one-pixel
borders between regions are labelled 0 ("unlabelled").

Scenes are written in the ADE20K layout (``images/{training,validation}/*.png`` and
``annotations/{...}/*.png`` with class c stored as c + 1), so they load with
``SegmentationFolder(root, reduce_zero_label=True)`` exactly like ADE20K. The seed fixes every
scene and the split.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

CLASS_NAMES = ("brick", "grass", "gravel", "coffee", "cat_fur", "pagoda", "flower", "deep_space")
_SOURCES = {"brick": ("skimage", "brick"), "grass": ("skimage", "grass"), "gravel": ("skimage", "gravel"),
            "coffee": ("skimage", "coffee"), "cat_fur": ("skimage", "chelsea"), "pagoda": ("sklearn", "china.jpg"),
            "flower": ("sklearn", "flower.jpg"), "deep_space": ("skimage", "hubble_deep_field")}
VERSION = 1


def load_textures() -> dict[str, np.ndarray]:
    """The source images as (H, W, 3) uint8 arrays, keyed by class name."""
    try:
        import skimage.data
    except ImportError as e:
        raise ImportError("the texture-scenes set cuts its textures from scikit-image's bundled images: "
                          "pip install scikit-image") from e
    from sklearn.datasets import load_sample_image
    out = {}
    for name, (pkg, key) in _SOURCES.items():
        img = getattr(skimage.data, key)() if pkg == "skimage" else load_sample_image(key)
        out[name] = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
    return out


def _texture_patch(src: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random (size, size, 3) crop of ``src`` at a random scale, with brightness/contrast jitter."""
    from PIL import Image
    scale = rng.uniform(0.6, 1.6)
    side = int(min(src.shape[0], src.shape[1], max(8, size * scale)))
    y, x = rng.integers(0, src.shape[0] - side + 1), rng.integers(0, src.shape[1] - side + 1)
    crop = Image.fromarray(src[y:y + side, x:x + side]).resize((size, size), Image.BILINEAR)
    patch = np.asarray(crop, dtype=np.float32)
    patch = (patch - patch.mean()) * rng.uniform(0.8, 1.2) + patch.mean() * rng.uniform(0.85, 1.15)
    return patch


def _voronoi_layout(size: int, rng: np.random.Generator) -> np.ndarray:
    n = int(rng.integers(2, 6))
    seeds = rng.uniform(0, size, (n, 2))
    yy, xx = np.mgrid[0:size, 0:size]
    d = (yy[None] - seeds[:, 0, None, None]) ** 2 + (xx[None] - seeds[:, 1, None, None]) ** 2
    return d.argmin(0)


def _polygon_layout(size: int, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image, ImageDraw
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    for region in range(1, int(rng.integers(2, 5))):
        cx, cy = rng.uniform(0.15, 0.85, 2) * size
        k = int(rng.integers(3, 8))
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = rng.uniform(0.15, 0.45, k) * size
        draw.polygon([(float(cx + r * np.cos(a)), float(cy + r * np.sin(a))) for a, r in zip(angles, radii)],
                     fill=region)
    return np.asarray(canvas, dtype=np.int64)


def make_scene(textures: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (size, size, 3) uint8 image and (size, size) uint8 annotation (class + 1, 0 on borders)."""
    layout = _voronoi_layout(size, rng) if rng.random() < 0.5 else _polygon_layout(size, rng)
    regions = np.unique(layout)
    classes = rng.choice(len(CLASS_NAMES), size=len(regions), replace=len(regions) > len(CLASS_NAMES))
    image = np.zeros((size, size, 3), np.float32)
    label = np.zeros((size, size), np.int64)
    for region, cls in zip(regions, classes):
        mask = layout == region
        image[mask] = _texture_patch(textures[CLASS_NAMES[cls]], size, rng)[mask]
        label[mask] = cls + 1
    border = np.zeros_like(mask)
    border[:, :-1] |= layout[:, :-1] != layout[:, 1:]
    border[:-1] |= layout[:-1] != layout[1:]
    label[border] = 0
    return np.clip(image, 0, 255).astype(np.uint8), label.astype(np.uint8)


def write_texture_scenes(root: str | os.PathLike, num_train: int = 400, num_val: int = 100, size: int = 128,
                         seed: int = 0) -> Path:
    """Generate the set into ``root`` (ADE20K layout) and return it; an existing identical set is reused."""
    from PIL import Image
    root = Path(root)
    meta = {"name": "texture-scenes", "version": VERSION, "classes": list(CLASS_NAMES), "num_train": num_train,
            "num_val": num_val, "size": size, "seed": seed, "reduce_zero_label": True}
    meta_file = root / "dataset.json"
    if meta_file.is_file() and json.loads(meta_file.read_text()) == meta:
        return root
    textures = load_textures()
    rng = np.random.default_rng(seed)
    for split, count in (("training", num_train), ("validation", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = make_scene(textures, size, rng)
            name = f"scene_{split[0]}{i:05d}.png"
            Image.fromarray(image).save(root / "images" / split / name)
            Image.fromarray(label, mode="L").save(root / "annotations" / split / name)
    from vitlab.checkpoints.atomic import atomic_write_json
    atomic_write_json(meta_file, meta)  # written last: its presence means the set is complete
    return root


def default_root() -> Path:
    """Where the built-in set is cached: ``$VITLAB_DATA/texture-scenes`` or ``~/.cache/vitlab/texture-scenes``."""
    base = os.environ.get("VITLAB_DATA") or Path.home() / ".cache" / "vitlab"
    return Path(base) / "texture-scenes"


def ensure_texture_scenes(root: str | os.PathLike | None = None) -> Path:
    """The set's folder (``root`` or :func:`default_root`), written with the default size on first use; an
    existing set (any size / seed) is used as it is."""
    root = Path(root or default_root())
    if not (root / "dataset.json").is_file():
        write_texture_scenes(root)
    return root


def read_split_arrays(root: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, H, W, 3) uint8, labels (N, H, W) int64)`` of one split (``training`` / ``validation``);
    labels are class indices with 255 on the unlabelled borders (``reduce_zero_label`` applied)."""
    from PIL import Image

    from vitlab.errors import DataError
    folder = Path(root) / "images" / split
    names = sorted(p.name for p in folder.glob("*.png")) if folder.is_dir() else []
    if not names:
        raise DataError(f"{folder}: no scene images (expected the texture-scenes layout, images/{split}/*.png)")
    images, labels = [], []
    for name in names:
        images.append(np.asarray(Image.open(folder / name).convert("RGB")))
        ann = np.asarray(Image.open(Path(root) / "annotations" / split / name), dtype=np.int64)
        labels.append(np.where(ann == 0, 255, ann - 1))
    return np.stack(images), np.stack(labels)


def dominant_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """(N,) the class covering the most labelled pixels of each (N, H, W) label map (an image-level label)."""
    counts = np.stack([(labels == c).reshape(len(labels), -1).sum(1) for c in range(num_classes)], 1)
    return counts.argmax(1)

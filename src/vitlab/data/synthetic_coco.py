"""Built-in COCO-format sets generated offline: textured shapes (instances) and stick figures (keypoints).

Nothing is downloaded: textures are cut from the photographs bundled with scikit-image and
scikit-learn (see :mod:`vitlab.data.synthetic_scenes`). Both sets are real COCO json files (they
load with pycocotools and :class:`~vitlab.data.coco.CocoDetection`) with PNG images::

    root/images/{train,val}/<id>.png
    root/annotations/instances_{train,val}.json          (write_synthetic_instances)
    root/annotations/person_keypoints_{train,val}.json   (write_synthetic_keypoints)
    root/dataset.json                                    (the generation arguments; written last)

* **Instances**: five categories that differ in shape *and* texture — ``disc`` (cat fur, orange),
  ``square`` (brick, red), ``triangle`` (yellow and black stripes), ``star`` (flower petals,
  magenta), ``ring`` (deep-sky photograph, cyan) — 1-6 per image on a desaturated photographic
  background. Images are ``size`` pixels on the long side (the short side 75-100 % of it, either
  orientation). Radii are log-uniform so that COCO's small (< 32^2), medium and large (> 96^2)
  area bins all occur. Later instances occlude earlier ones: an instance's mask is what stays
  visible, and instances left with under 15 % of their in-image area or under 20 pixels are not
  annotated (their visible remainder still shows).
* **Keypoints**: 1-3 articulated stick figures per image (thick limbs, a torso, a head with eyes),
  random lean, limb angles, face turn, scale and position, facing the camera (the figure's left on
  the image's right). The 17 COCO keypoints come with ``v = 2`` (visible), ``v = 1`` (inside the
  image but covered by a figure drawn later) or ``v = 0`` (outside the image, stored as 0, 0, 0),
  ``num_keypoints``, the person category with COCO's keypoint names and skeleton, and each
  figure's visible mask.

Masks are stored as **compressed RLE** (``pycocotools.mask.encode``); ``area`` is the mask's pixel
count and ``bbox`` the visible mask's extent (``toBbox``: ``[x, y, w, h]``, ``w = x_max - x_min + 1``).
Shapes are rasterised exactly on pixel centres; every painted primitive (annotated or not) is kept
in paint order in the image entry (``shapes`` / ``figures``, with its ``ann_id`` or null), so a
mask can be re-rendered with :func:`render_shape` / :func:`render_figure` and checked. Each image
is a function of ``(seed, split, index)`` alone; a set is generated into a temporary folder and
renamed into place, and an existing set made with the same arguments is reused.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from vitlab.errors import DataError

VERSION = 1
CATEGORIES = ("disc", "square", "triangle", "star", "ring")
# category -> (texture source, tint colour); "stripes" is procedural
_OBJECT_TEXTURES = {"disc": ("cat_fur", (255, 150, 40)), "square": ("brick", (220, 40, 40)),
                    "triangle": ("stripes", (250, 220, 30)), "star": ("flower", (230, 60, 220)),
                    "ring": ("deep_space", (40, 220, 240))}
_BACKGROUNDS = ("grass", "gravel", "pagoda", "coffee")
_RING_INNER = 0.55   # inner radius of a ring, relative to its outer radius
_STAR_INNER = 0.45   # inner vertices of a star, relative to its outer radius
MIN_VISIBLE_FRACTION, MIN_VISIBLE_PIXELS = 0.15, 20

KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                  "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                  "right_knee", "left_ankle", "right_ankle")
# COCO's person skeleton (1-based keypoint indices)
SKELETON = ((16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9), (8, 10),
            (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7))
# limbs drawn as capsules (0-based keypoint pairs): arms, legs, shoulder and hip lines
_LIMBS = ((5, 7), (7, 9), (6, 8), (8, 10), (11, 13), (13, 15), (12, 14), (14, 16), (5, 6), (11, 12))


# ---------------------------------------------------------------- rasterisation (pixel centres)

def _window(x0: float, y0: float, x1: float, y1: float, h: int, w: int):
    """Integer pixel window covering [x0, x1] x [y0, y1], clipped to the image; None when empty."""
    ix0, iy0 = max(int(np.floor(x0)) - 1, 0), max(int(np.floor(y0)) - 1, 0)
    ix1, iy1 = min(int(np.ceil(x1)) + 1, w), min(int(np.ceil(y1)) + 1, h)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    ys, xs = np.mgrid[iy0:iy1, ix0:ix1].astype(np.float64) + 0.5
    return (iy0, iy1, ix0, ix1), xs, ys


def _in_polygon(xs: np.ndarray, ys: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Even-odd point-in-polygon test of the points (xs, ys)."""
    inside = np.zeros(xs.shape, bool)
    xj, yj = verts[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        for xi, yi in verts:
            cross = ((yi > ys) != (yj > ys)) & (xs < (xj - xi) * (ys - yi) / (yj - yi) + xi)
            inside ^= cross
            xj, yj = xi, yi
    return inside


def shape_vertices(shape: dict) -> np.ndarray:
    """(V, 2) vertices of a polygonal shape (square, triangle, star)."""
    cx, cy, r, a = shape["cx"], shape["cy"], shape["r"], shape["angle"]
    kind = shape["shape"]
    if kind == "square":
        t = a + np.pi / 4 + np.arange(4) * np.pi / 2
        rad = np.full(4, r)
    elif kind == "triangle":
        t = a + np.arange(3) * 2 * np.pi / 3
        rad = np.full(3, r)
    elif kind == "star":
        t = a + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, r, r * _STAR_INNER)
    else:
        raise ValueError(f"{kind!r} is not a polygonal shape")
    return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1)


def render_shape(shape: dict, h: int, w: int) -> np.ndarray:
    """The (h, w) bool mask of one whole shape: pixels whose centre lies inside it."""
    mask = np.zeros((h, w), bool)
    cx, cy, r = shape["cx"], shape["cy"], shape["r"]
    win = _window(cx - r, cy - r, cx + r, cy + r, h, w)
    if win is None:
        return mask
    (y0, y1, x0, x1), xs, ys = win
    if shape["shape"] in ("disc", "ring"):
        d2 = (xs - cx) ** 2 + (ys - cy) ** 2
        inside = d2 <= r * r
        if shape["shape"] == "ring":
            inside &= d2 >= (r * _RING_INNER) ** 2
    else:
        inside = _in_polygon(xs, ys, shape_vertices(shape))
    mask[y0:y1, x0:x1] = inside
    return mask


def _capsule(mask: np.ndarray, a, b, radius: float) -> None:
    """Set the pixels within ``radius`` of the segment a-b."""
    h, w = mask.shape
    win = _window(min(a[0], b[0]) - radius, min(a[1], b[1]) - radius, max(a[0], b[0]) + radius,
                  max(a[1], b[1]) + radius, h, w)
    if win is None:
        return
    (y0, y1, x0, x1), xs, ys = win
    dx, dy = b[0] - a[0], b[1] - a[1]
    t = np.clip(((xs - a[0]) * dx + (ys - a[1]) * dy) / max(dx * dx + dy * dy, 1e-12), 0.0, 1.0)
    near = (xs - a[0] - t * dx) ** 2 + (ys - a[1] - t * dy) ** 2 <= radius * radius
    mask[y0:y1, x0:x1] |= near


def _disc(mask: np.ndarray, c, radius: float) -> None:
    _capsule(mask, c, c, radius)


def _polygon(mask: np.ndarray, verts: np.ndarray) -> None:
    h, w = mask.shape
    win = _window(verts[:, 0].min(), verts[:, 1].min(), verts[:, 0].max(), verts[:, 1].max(), h, w)
    if win is not None:
        (y0, y1, x0, x1), xs, ys = win
        mask[y0:y1, x0:x1] |= _in_polygon(xs, ys, verts)


def render_figure_parts(fig: dict, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(body, head) bool masks of one stick figure: limbs, torso and neck; the head disc."""
    j = np.asarray(fig["joints"], np.float64)
    neck, head, width = fig["neck"], fig["head"], fig["width"]
    body = np.zeros((h, w), bool)
    for a, b in _LIMBS:
        _capsule(body, j[a], j[b], width / 2)
    _polygon(body, j[[5, 6, 12, 11]])
    _capsule(body, neck, head[:2], width / 2)
    headm = np.zeros((h, w), bool)
    _disc(headm, head[:2], head[2])
    return body & ~headm, headm


def render_figure(fig: dict, h: int, w: int) -> np.ndarray:
    """The (h, w) bool mask of one whole stick figure."""
    body, head = render_figure_parts(fig, h, w)
    return body | head


# ---------------------------------------------------------------- textures

def _crop(src: np.ndarray, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random (h, w, 3) float crop of ``src`` at a random scale."""
    from PIL import Image
    scale = rng.uniform(0.5, 1.5)
    ch = int(min(src.shape[0], max(8, h * scale)))
    cw = int(min(src.shape[1], max(8, w * scale)))
    y, x = rng.integers(0, src.shape[0] - ch + 1), rng.integers(0, src.shape[1] - cw + 1)
    img = Image.fromarray(src[y:y + ch, x:x + cw]).resize((w, h), Image.BILINEAR)
    return np.asarray(img, np.float32)


def _stripes(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    a, period = rng.uniform(0, np.pi), rng.uniform(5, 9)
    v = (np.sin((xs * np.cos(a) + ys * np.sin(a)) * 2 * np.pi / period) > 0).astype(np.float32)
    return np.repeat((40 + 215 * v)[..., None], 3, 2)


def _object_texture(category: str, textures: dict, h: int, w: int, rng) -> np.ndarray:
    source, tint = _OBJECT_TEXTURES[category]
    patch = _stripes(h, w, rng) if source == "stripes" else _crop(textures[source], h, w, rng)
    gray = patch.mean(2, keepdims=True)
    gray = np.clip(0.5 + (gray - gray.mean()) / (5.0 * gray.std() + 1e-3), 0, 1)  # contrast-normalised
    tinted = (0.45 + 0.55 * gray) * np.asarray(tint, np.float32)
    out = 0.8 * tinted + 0.2 * patch
    return out * rng.uniform(0.85, 1.1)


def _background(textures: dict, h: int, w: int, rng) -> np.ndarray:
    patch = _crop(textures[_BACKGROUNDS[int(rng.integers(len(_BACKGROUNDS)))]], h, w, rng)
    gray = patch.mean(2, keepdims=True)
    sat = rng.uniform(0.15, 0.4)
    out = gray + sat * (patch - gray)
    out = (out - out.mean()) * rng.uniform(0.5, 0.8) + rng.uniform(80, 150)
    return out


def _bounds(mask: np.ndarray) -> tuple[slice, slice]:
    """The row and column slices of a non-empty mask's bounding box."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _paint(image: np.ndarray, mask: np.ndarray, texture: Callable[[int, int], np.ndarray]) -> None:
    """Fill ``mask`` with ``texture(h, w)``, generated for the mask's bounding box only."""
    ys, xs = _bounds(mask)
    sub = mask[ys, xs]
    image[ys, xs][sub] = texture(*sub.shape)[sub]


def _image_size(size: int, rng) -> tuple[int, int]:
    short = int(rng.integers(int(round(size * 0.75)), size + 1))
    return (size, short) if rng.random() < 0.5 else (short, size)


def _encode(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _annotation(ann_id: int, image_id: int, category_id: int, mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils
    rle = _encode(mask)
    coded = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": int(mask_utils.area(coded)), "bbox": [float(v) for v in mask_utils.toBbox(coded)],
            "iscrowd": 0}


def _visible(full: list[np.ndarray]) -> list[np.ndarray]:
    """Each mask minus the union of the masks painted after it."""
    out, later = [None] * len(full), np.zeros_like(full[0]) if full else None
    for i in range(len(full) - 1, -1, -1):
        out[i] = full[i] & ~later
        later = later | full[i]
    return out


def _kept(full: np.ndarray, visible: np.ndarray) -> bool:
    n = int(visible.sum())
    return n >= MIN_VISIBLE_PIXELS and n >= MIN_VISIBLE_FRACTION * int(full.sum())


# ---------------------------------------------------------------- instances

def make_instance_image(textures: dict, size: int, rng: np.random.Generator):
    """One image: (h, w, 3) uint8, the painted shapes in order, their visible masks."""
    h, w = _image_size(size, rng)
    image = _background(textures, h, w, rng)
    shapes, full = [], []
    k = size / 192.0
    for _ in range(int(rng.integers(1, 7))):
        cat = int(rng.integers(len(CATEGORIES)))
        shape = {"shape": CATEGORIES[cat], "cx": round(float(rng.uniform(0.05, 0.95) * w), 2),
                 "cy": round(float(rng.uniform(0.05, 0.95) * h), 2),
                 "r": round(float(np.exp(rng.uniform(np.log(6 * k), np.log(110 * k)))), 2),
                 "angle": round(float(rng.uniform(0, 2 * np.pi)), 4)}
        mask = render_shape(shape, h, w)
        if not mask.any():
            continue
        _paint(image, mask, lambda hh, ww: _object_texture(CATEGORIES[cat], textures, hh, ww, rng))
        shapes.append(shape)
        full.append(mask)
    return np.clip(image, 0, 255).astype(np.uint8), shapes, full, _visible(full)


def _categories() -> list[dict]:
    return [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)]


def _write_instances_split(out: Path, split: str, count: int, size: int, seed: int, textures: dict) -> None:
    from PIL import Image
    images, anns = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
        image, shapes, full, visible = make_instance_image(textures, size, rng)
        image_id = i + 1
        name = f"{image_id:012d}.png"
        Image.fromarray(image).save(out / "images" / split / name, compress_level=1)
        for shape, f, v in zip(shapes, full, visible):
            shape["ann_id"] = None
            if _kept(f, v):
                shape["ann_id"] = len(anns) + 1
                anns.append(_annotation(len(anns) + 1, image_id, CATEGORIES.index(shape["shape"]) + 1, v))
        images.append({"id": image_id, "file_name": name, "height": image.shape[0], "width": image.shape[1],
                       "shapes": shapes})
    _write_json(out / "annotations" / f"instances_{split}.json",
                {"info": {"description": "vitlab synthetic instances", "version": VERSION}, "licenses": [],
                 "images": images, "annotations": anns, "categories": _categories()})


# ---------------------------------------------------------------- keypoint figures

def _figure(h: int, w: int, size: int, rng: np.random.Generator) -> dict:
    """Random stick-figure geometry (coordinates rounded, so the stored numbers re-render exactly)."""
    T = float(np.exp(rng.uniform(np.log(0.08 * size), np.log(0.45 * size))))
    lean = rng.uniform(-0.35, 0.35)
    d = np.array([np.sin(lean), np.cos(lean)])   # down the body
    p = np.array([np.cos(lean), -np.sin(lean)])  # towards the figure's left (image right)
    neck = np.array([rng.uniform(0.1, 0.9) * w, rng.uniform(0.75 * T, max(0.75 * T + 1, h - 1.6 * T))])

    def direction(side, phi):  # unit vector; phi: 0 = down, pi/2 = outwards (on the figure's ``side``), pi = up
        return np.cos(phi) * d + np.sin(phi) * side * p

    pelvis = neck + T * d
    j = np.zeros((17, 2))
    head = neck - 0.42 * T * d
    turn = rng.uniform(-0.4, 0.4)
    j[0] = head + turn * 0.14 * T * p + 0.07 * T * d
    for idx, side in ((1, 1), (2, -1)):
        j[idx] = head + (side * 0.11 + turn * 0.1) * T * p - 0.05 * T * d
    for idx, side in ((3, 1), (4, -1)):
        j[idx] = head + (side * 0.26 + turn * 0.03) * T * p + 0.01 * T * d
    for s_idx, side in ((5, 1), (6, -1)):  # shoulder, elbow, wrist
        j[s_idx] = neck + 0.08 * T * d + side * 0.42 * T * p
        phi = rng.uniform(-0.3, 2.8)
        j[s_idx + 2] = j[s_idx] + 0.55 * T * direction(side, phi)
        j[s_idx + 4] = j[s_idx + 2] + 0.5 * T * direction(side, phi + rng.uniform(-2.2, 0.6))
    for h_idx, side in ((11, 1), (12, -1)):  # hip, knee, ankle
        j[h_idx] = pelvis + side * 0.26 * T * p
        phi = rng.uniform(-0.15, 0.9)
        j[h_idx + 2] = j[h_idx] + 0.68 * T * direction(side, phi)
        j[h_idx + 4] = j[h_idx + 2] + 0.65 * T * direction(side, phi + rng.uniform(-0.9, 0.4))
    r2 = lambda v: [round(float(x), 2) for x in v]  # noqa: E731
    return {"joints": [r2(v) for v in j], "neck": r2(neck), "head": r2([*head, 0.27 * T]),
            "width": round(max(3.0, 0.22 * T), 2), "scale": round(T, 2)}


def _paint_figure(image: np.ndarray, fig: dict, textures: dict, rng) -> np.ndarray:
    h, w = image.shape[:2]
    body, head = render_figure_parts(fig, h, w)
    hue = rng.uniform(0.2, 1.0, 3) * 255
    source = textures[("brick", "gravel", "cat_fur", "flower")[int(rng.integers(4))]]

    def cloth(hh, ww):
        return (0.35 + 0.65 * _crop(source, hh, ww, rng).mean(2, keepdims=True) / 255.0) * hue

    if body.any():
        _paint(image, body, cloth)
    skin = np.asarray([(230, 190, 160), (190, 140, 100), (140, 95, 65), (250, 215, 190)][int(rng.integers(4))],
                      np.float32)
    image[head] = skin * rng.uniform(0.9, 1.05)
    eyes = np.zeros((h, w), bool)
    for k in (1, 2):
        _disc(eyes, fig["joints"][k], max(1.0, 0.04 * fig["scale"]))
    image[eyes & head] = 30.0
    return body | head


def make_keypoint_image(textures: dict, size: int, rng: np.random.Generator):
    """One image: (h, w, 3) uint8, the figures in paint order, their whole and visible masks."""
    h, w = _image_size(size, rng)
    image = _background(textures, h, w, rng)
    figures, full = [], []
    for _ in range(int(rng.integers(1, 4))):
        fig = _figure(h, w, size, rng)
        mask = _paint_figure(image, fig, textures, rng)
        if mask.any():
            figures.append(fig)
            full.append(mask)
    return np.clip(image, 0, 255).astype(np.uint8), figures, full, _visible(full)


def figure_keypoints(fig: dict, later: np.ndarray) -> list[float]:
    """COCO ``[x, y, v] * 17``: v = 0 outside the image, 1 covered by ``later`` (figures drawn after), else 2."""
    h, w = later.shape
    out = []
    for x, y in fig["joints"]:
        if not (0 <= x < w and 0 <= y < h):
            out += [0.0, 0.0, 0]
        else:
            out += [float(x), float(y), 1 if later[int(y), int(x)] else 2]
    return out


def _write_keypoints_split(out: Path, split: str, count: int, size: int, seed: int, textures: dict) -> None:
    from PIL import Image
    images, anns = [], []
    for i in range(count):
        rng = np.random.default_rng([seed, 2 if split == "train" else 3, i])
        image, figures, full, visible = make_keypoint_image(textures, size, rng)
        image_id = i + 1
        name = f"{image_id:012d}.png"
        Image.fromarray(image).save(out / "images" / split / name, compress_level=1)
        later = np.zeros(image.shape[:2], bool)
        kps = [None] * len(figures)
        for n in range(len(figures) - 1, -1, -1):
            kps[n] = figure_keypoints(figures[n], later)
            later |= full[n]
        for fig, f, v, kp in zip(figures, full, visible, kps):
            fig["ann_id"] = None
            if _kept(f, v):
                fig["ann_id"] = len(anns) + 1
                ann = _annotation(len(anns) + 1, image_id, 1, v)
                ann["keypoints"] = kp
                ann["num_keypoints"] = sum(1 for t in kp[2::3] if t > 0)
                anns.append(ann)
        images.append({"id": image_id, "file_name": name, "height": image.shape[0], "width": image.shape[1],
                       "figures": figures})
    person = {"id": 1, "name": "person", "supercategory": "person", "keypoints": list(KEYPOINT_NAMES),
              "skeleton": [list(s) for s in SKELETON]}
    _write_json(out / "annotations" / f"person_keypoints_{split}.json",
                {"info": {"description": "vitlab synthetic keypoint figures", "version": VERSION}, "licenses": [],
                 "images": images, "annotations": anns, "categories": [person]})


# ---------------------------------------------------------------- writing

def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")))


def _read_spec(root: Path) -> dict | None:
    try:
        return json.loads((root / "dataset.json").read_text())
    except (OSError, ValueError):
        return None


def _write_set(root, spec: dict, write_split: Callable) -> Path:
    """Generate the set into a temporary folder next to ``root`` and rename it into place."""
    from vitlab.checkpoints.atomic import atomic_write_json
    from .synthetic_scenes import load_textures
    root = Path(root)
    if _read_spec(root) == spec:
        return root
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        old = _read_spec(root)
        if old is None or old.get("name") != spec["name"]:
            raise DataError(f"{root} exists and is not a {spec['name']} set (no matching dataset.json); "
                            f"give an empty or new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    trash = None
    try:
        textures = load_textures()
        for split, count in (("train", spec["num_train"]), ("val", spec["num_val"])):
            (tmp / "images" / split).mkdir(parents=True)
            (tmp / "annotations").mkdir(exist_ok=True)
            write_split(tmp, split, count, spec["size"], spec["seed"], textures)
        atomic_write_json(tmp / "dataset.json", spec)
        if root.exists() and _read_spec(root) is not None and _read_spec(root) != spec:
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}-old-", dir=root.parent))
            os.replace(root, trash / "set")  # an older set of ours, made with other arguments
        try:
            os.replace(tmp, root)
        except OSError:
            if _read_spec(root) != spec:  # not another process that finished the same set first
                raise
    finally:
        for folder in (tmp, trash):
            if folder is not None and folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
    return root


def write_synthetic_instances(root: str | os.PathLike, num_train: int = 300, num_val: int = 60, size: int = 192,
                              seed: int = 0) -> Path:
    """Generate (once) the textured-shapes instance set into ``root``; returns ``root``."""
    spec = {"name": "synthetic-coco-instances", "version": VERSION, "num_train": int(num_train),
            "num_val": int(num_val), "size": int(size), "seed": int(seed), "masks": "compressed RLE",
            "classes": list(CATEGORIES)}
    return _write_set(root, spec, _write_instances_split)


def write_synthetic_keypoints(root: str | os.PathLike, num_train: int = 400, num_val: int = 80, size: int = 192,
                              seed: int = 0) -> Path:
    """Generate (once) the stick-figure keypoint set into ``root``; returns ``root``."""
    spec = {"name": "synthetic-coco-keypoints", "version": VERSION, "num_train": int(num_train),
            "num_val": int(num_val), "size": int(size), "seed": int(seed), "masks": "compressed RLE",
            "classes": ["person"]}
    return _write_set(root, spec, _write_keypoints_split)


def default_root(kind: str = "instances") -> Path:
    """Where a built-in set is cached: ``$VITLAB_DATA/synthetic-coco-<kind>`` or ``~/.cache/vitlab/...``."""
    if kind not in ("instances", "keypoints"):
        raise ValueError(f"kind must be 'instances' or 'keypoints', got {kind!r}")
    base = os.environ.get("VITLAB_DATA") or Path.home() / ".cache" / "vitlab"
    return Path(base) / f"synthetic-coco-{kind}"

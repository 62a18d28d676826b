"""Drawing detections, instance masks and keypoints over an image (a PNG at the image's own size).

:func:`render_detections` returns the picture as a uint8 (H, W, 3) array; :func:`draw_detections`
writes it as a PNG atomically (``vitlab.checkpoints.atomic.atomic_write``). Boxes get their class
colour, a ``"name 0.87"`` tag and (with ``masks``) a semi-transparent mask fill; keypoints are dots
joined by the COCO skeleton (joints below ``kpt_thr`` are left out); a legend of the classes drawn
sits in the top-right corner and an optional caption in the top-left. Instances below ``score_thr``
are not drawn. Everything is drawn with Pillow.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

# COCO's person skeleton (0-based joint indices, the 19 limbs of the COCO keypoint annotation file)
COCO_SKELETON = ((15, 13), (13, 11), (16, 14), (14, 12), (11, 12), (5, 11), (6, 12), (5, 6), (5, 7), (6, 8),
                 (7, 9), (8, 10), (1, 2), (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6))

_BASE_COLORS = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                         [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                         [0, 128, 128], [220, 190, 255], [170, 110, 40], [128, 0, 0], [170, 255, 195],
                         [128, 128, 0], [0, 0, 128], [255, 215, 180]], dtype=np.uint8)
_LEFT, _RIGHT, _MIDDLE = (0, 200, 255), (255, 140, 0), (60, 220, 60)  # keypoint colours by body side


def class_colors(num_classes: int, seed: int = 5) -> np.ndarray:
    """A fixed (num_classes, 3) uint8 colour table."""
    if num_classes <= len(_BASE_COLORS):
        return _BASE_COLORS[:max(num_classes, 0)]
    extra = np.random.default_rng(seed).integers(40, 256, (num_classes - len(_BASE_COLORS), 3), dtype=np.uint8)
    return np.concatenate([_BASE_COLORS, extra])


def _numpy(x):
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _image_array(image) -> np.ndarray:
    """(3, H, W) / (H, W, 3) / (H, W) tensor or array, uint8 or float in [0, 1] -> uint8 (H, W, 3)."""
    img = _numpy(image)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3:
        raise ValueError(f"image must be (3, H, W) or (H, W, 3), got shape {img.shape}")
    if img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = img.transpose(1, 2, 0)
    if img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    if img.dtype != np.uint8:
        img = img.astype(np.float32)
        if img.max(initial=0) <= 1.0:
            img = img * 255.0
        img = img.clip(0, 255).round().astype(np.uint8)
    return np.ascontiguousarray(img)


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _kpt_color(j: int) -> tuple[int, int, int]:
    return _MIDDLE if j == 0 else (_LEFT if j % 2 == 1 else _RIGHT)


def render_detections(image, boxes=None, labels=None, scores=None, masks=None, keypoints=None,
                      class_names=None, score_thr: float = 0.3, kpt_thr: float = 0.3, skeleton=COCO_SKELETON,
                      title: str = "", alpha: float = 0.45, legend: bool = True) -> np.ndarray:
    """The drawing as uint8 (H, W, 3), the image's size.

    ``boxes`` (n, 4) xyxy pixels, ``labels`` (n,) contiguous class indices, ``scores`` (n,), ``masks``
    (n, H, W) bool, ``keypoints`` (n, K, 3) x, y, score (or visibility); any may be None.
    """
    from PIL import Image, ImageDraw
    img = _image_array(image)
    H, W = img.shape[:2]
    boxes, labels, scores = _numpy(boxes), _numpy(labels), _numpy(scores)
    masks, keypoints = _numpy(masks), _numpy(keypoints)
    n = next((len(a) for a in (boxes, masks, keypoints, scores) if a is not None), 0)
    for name, arr in (("boxes", boxes), ("labels", labels), ("scores", scores), ("masks", masks),
                      ("keypoints", keypoints)):
        if arr is not None and len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} entries for {n} instances")
    if masks is not None and masks.shape[-2:] != (H, W):
        raise ValueError(f"masks are {masks.shape[-2:]} but the image is {(H, W)}")
    labels = np.zeros(n, dtype=np.int64) if labels is None else labels.astype(np.int64)
    keep = np.ones(n, bool) if scores is None else scores >= score_thr
    k = max(int(labels.max(initial=-1)) + 1, len(class_names or ()))
    colors = class_colors(max(k, 1))
    names = list(class_names) if class_names else [str(c) for c in range(max(k, 1))]

    out = img.astype(np.float32)
    if masks is not None:
        for i in np.flatnonzero(keep):
            m = masks[i].astype(bool)
            out[m] = (1 - alpha) * out[m] + alpha * colors[labels[i]]
    canvas = Image.fromarray(out.clip(0, 255).round().astype(np.uint8))
    draw = ImageDraw.Draw(canvas, "RGBA")
    line = max(1, round(min(H, W) / 250))
    font = _font(max(9, min(16, round(min(H, W) / 32))))

    def tag(x, y, text, fill):
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l, b - t
        x = int(min(max(x, 0), max(W - tw - 4, 0)))
        y = int(y - th - 4) if y - th - 4 >= 0 else int(y)
        draw.rectangle([x, y, x + tw + 4, y + th + 4], fill=(*fill, 200))
        draw.text((x + 2 - l, y + 2 - t), text, fill=(255, 255, 255), font=font)

    if boxes is not None:
        for i in np.flatnonzero(keep):
            x1, y1, x2, y2 = (float(v) for v in boxes[i][:4])
            c = tuple(int(v) for v in colors[labels[i]])
            draw.rectangle([x1, y1, x2, y2], outline=c, width=line)
            text = names[labels[i]] if labels[i] < len(names) else str(labels[i])
            if scores is not None:
                text += f" {float(scores[i]):.2f}"
            tag(x1, y1, text, c)
    if keypoints is not None:
        r = max(2, line + 1)
        for i in np.flatnonzero(keep):
            kp = keypoints[i]
            ok = kp[:, 2] > kpt_thr
            for a, b in skeleton:
                if a < len(kp) and b < len(kp) and ok[a] and ok[b]:
                    draw.line([(float(kp[a, 0]), float(kp[a, 1])), (float(kp[b, 0]), float(kp[b, 1]))],
                              fill=(*_kpt_color(b), 230), width=line + 1)
            for j in np.flatnonzero(ok):
                x, y = float(kp[j, 0]), float(kp[j, 1])
                draw.ellipse([x - r, y - r, x + r, y + r], fill=_kpt_color(j), outline=(0, 0, 0))
    if legend and n and (boxes is not None or masks is not None):
        present = sorted(set(labels[keep].tolist()))
        if present:
            rows = [(names[c] if c < len(names) else str(c), tuple(int(v) for v in colors[c])) for c in present]
            sizes = [draw.textbbox((0, 0), t, font=font) for t, _ in rows]
            th = max(b - t for _, t, _, b in sizes)
            tw = max(r - l for l, _, r, _ in sizes)
            x0 = max(W - tw - th - 12, 0)
            draw.rectangle([x0, 0, W - 1, len(rows) * (th + 4) + 4], fill=(0, 0, 0, 150))
            for row, ((text, c), (l, t, _, _)) in enumerate(zip(rows, sizes)):
                y = 4 + row * (th + 4)
                draw.rectangle([x0 + 4, y, x0 + 4 + th, y + th], fill=c)
                draw.text((x0 + 8 + th - l, y - t), text, fill=(255, 255, 255), font=font)
    if title:
        l, t, r, b = draw.textbbox((0, 0), title, font=font)
        draw.rectangle([0, 0, min(r - l + 8, W - 1), b - t + 8], fill=(0, 0, 0, 160))
        draw.text((4 - l, 4 - t), title, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def upscale(image, args: dict, min_side: int) -> tuple[np.ndarray, dict]:
    """A small image (and its boxes, masks, keypoints) enlarged by an integer factor to ``min_side`` pixels at
    least, so the drawing stays readable; larger images are returned as they are."""
    from PIL import Image
    img = _image_array(image)
    f = int(np.ceil(min_side / max(1, min(img.shape[:2])))) if min_side else 1
    if f <= 1:
        return img, args
    img = np.asarray(Image.fromarray(img).resize((img.shape[1] * f, img.shape[0] * f), Image.BILINEAR))
    out = dict(args)
    for key in ("boxes", "keypoints"):
        if out.get(key) is not None:
            a = _numpy(out[key]).astype(np.float64).copy()
            a[..., :2 if key == "keypoints" else 4] *= f
            out[key] = a
    if out.get("masks") is not None:
        out["masks"] = _numpy(out["masks"]).repeat(f, axis=-2).repeat(f, axis=-1)
    return img, out


def draw_detections(path: str | os.PathLike, image, prediction: dict | None = None, min_side: int = 480,
                    **kwargs) -> Path:
    """Write :func:`render_detections` as a PNG at ``path`` (atomically); ``prediction`` may hold the
    ``boxes`` / ``labels`` / ``scores`` / ``masks`` / ``keypoints`` arguments. Images smaller than
    ``min_side`` are enlarged first (an integer factor) so that labels stay legible. Returns the path."""
    from PIL import Image

    from vitlab.checkpoints.atomic import atomic_write
    args = {k: v for k, v in (prediction or {}).items()
            if k in ("boxes", "labels", "scores", "masks", "keypoints")}
    image, args = upscale(image, args, min_side)
    args.update(kwargs)
    picture = render_detections(image, **args)
    path = Path(path)
    atomic_write(path, lambda p: Image.fromarray(picture).save(p, format="PNG"))
    return path

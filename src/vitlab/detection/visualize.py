"""Drawing detections, instance masks and keypoints over an image.

:func:`render_detections` returns the picture as a uint8 array; :func:`draw_detections` writes it as a
PNG atomically (``vitlab.checkpoints.atomic.atomic_write``). Boxes get their class colour, a
``"name 0.87"`` tag and (with ``masks``) a semi-transparent mask fill; keypoints are dots joined by the
COCO skeleton (joints below ``kpt_thr`` are left out). Instances below ``score_thr`` are not drawn.
On the image itself the legend of the classes drawn sits in the top-right corner and the caption in the
top-left; with ``header=True`` (what the written PNGs use) both go to a band above the image, so they
hide nothing. With ``truth`` the PNG shows the ground truth and the prediction side by side.
Everything is drawn with Pillow.
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


KEYPOINT_LEGEND = [("nose", _MIDDLE), ("left joints", _LEFT), ("right joints", _RIGHT)]  # COCO order: odd = left


def render_detections(image, boxes=None, labels=None, scores=None, masks=None, keypoints=None,
                      class_names=None, score_thr: float = 0.3, kpt_thr: float = 0.3, skeleton=COCO_SKELETON,
                      title: str = "", alpha: float = 0.45, legend: bool = True, header: bool = False) -> np.ndarray:
    """The drawing as uint8 (H, W, 3), the image's size (``header``: with the title and legend band above).

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

    if boxes is not None:
        _draw_boxes(draw, font, line, boxes, labels, scores, keep, names, colors)
    if keypoints is not None:
        _draw_keypoints(draw, line, keypoints, keep, kpt_thr, skeleton)
    rows = _legend_rows(labels[keep], names, colors) if legend and (boxes is not None or masks is not None) else []
    if legend and header and keypoints is not None:   # in the band only: on the image it would cover joints
        rows += KEYPOINT_LEGEND
    if header:
        return stack_header(np.asarray(canvas), title, rows)
    if rows:
        _draw_legend_corner(draw, font, rows)
    if title:
        l, t, r, b = draw.textbbox((0, 0), title, font=font)
        draw.rectangle([0, 0, min(r - l + 8, W - 1), b - t + 8], fill=(0, 0, 0, 160))
        draw.text((4 - l, 4 - t), title, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def _draw_boxes(draw, font, line: int, boxes, labels, scores, keep, names, colors) -> None:
    """Each kept box in its class colour with a ``"name 0.87"`` tag above it (inside the image)."""
    W = draw.im.size[0]
    for i in np.flatnonzero(keep):
        x1, y1, x2, y2 = (float(v) for v in boxes[i][:4])
        c = tuple(int(v) for v in colors[labels[i]])
        draw.rectangle([x1, y1, x2, y2], outline=c, width=line)
        text = names[labels[i]] if labels[i] < len(names) else str(labels[i])
        if scores is not None:
            text += f" {float(scores[i]):.2f}"
        l, t, r, b = draw.textbbox((0, 0), text, font=font)
        tw, th = r - l, b - t
        x = int(min(max(x1, 0), max(W - tw - 4, 0)))
        y = int(y1 - th - 4) if y1 - th - 4 >= 0 else int(y1)
        draw.rectangle([x, y, x + tw + 4, y + th + 4], fill=(*c, 200))
        draw.text((x + 2 - l, y + 2 - t), text, fill=(255, 255, 255), font=font)


def _draw_keypoints(draw, line: int, keypoints, keep, kpt_thr: float, skeleton) -> None:
    """Joints above ``kpt_thr`` as dots (coloured by body side), joined by the skeleton's limbs."""
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


def _draw_legend_corner(draw, font, rows) -> None:
    """The legend chips on a dark box in the image's top-right corner."""
    W = draw.im.size[0]
    sizes = [draw.textbbox((0, 0), t, font=font) for t, _ in rows]
    th = max(b - t for _, t, _, b in sizes)
    tw = max(r - l for l, _, r, _ in sizes)
    x0 = max(W - tw - th - 12, 0)
    draw.rectangle([x0, 0, W - 1, len(rows) * (th + 4) + 4], fill=(0, 0, 0, 150))
    for row, ((text, c), (l, t, _, _)) in enumerate(zip(rows, sizes)):
        y = 4 + row * (th + 4)
        draw.rectangle([x0 + 4, y, x0 + 4 + th, y + th], fill=c)
        draw.text((x0 + 8 + th - l, y - t), text, fill=(255, 255, 255), font=font)


def _legend_rows(labels: np.ndarray, names: list[str], colors: np.ndarray) -> list[tuple[str, tuple]]:
    """(name, colour) of each class present in ``labels``, in class order."""
    return [(names[c] if c < len(names) else str(c), tuple(int(v) for v in colors[c]))
            for c in sorted(set(labels.tolist()))]


def stack_header(picture: np.ndarray, title: str, rows: list[tuple[str, tuple]]) -> np.ndarray:
    """``picture`` below a white band holding ``title`` and the legend chips (wrapped to the width)."""
    from PIL import Image, ImageDraw
    if not title and not rows:
        return picture
    H, W = picture.shape[:2]
    font = _font(max(11, min(18, round(W / 40))))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = max(probe.textbbox((0, 0), "Ag", font=font)[3], 10) + 6
    lines: list[list[tuple[int, str, tuple | None]]] = [[]] if not title else [[(4, title, None)], []]
    x = 4
    for text, color in rows:
        w = probe.textbbox((0, 0), text, font=font)[2] + line_h + 10
        if x + w > W and lines[-1]:
            lines.append([])
            x = 4
        lines[-1].append((x, text, color))
        x += w
    lines = [ln for ln in lines if ln]
    band = Image.new("RGB", (W, len(lines) * line_h + 4), (255, 255, 255))
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        y = 3 + i * line_h
        for x, text, color in line:
            if color is not None:
                draw.rectangle([x, y + 2, x + line_h - 8, y + line_h - 6], fill=color, outline=(0, 0, 0))
                x += line_h - 2
            draw.text((x, y), text, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(band), picture], axis=0)


def render_comparison(image, truth: dict, prediction: dict, class_names=None, score_thr: float = 0.3,
                      title: str = "", **kwargs) -> np.ndarray:
    """Ground truth (left) and prediction (right) of one image, each captioned above, under one title and legend."""
    k = len(class_names or ())
    for d in (truth, prediction):
        if d.get("labels") is not None and len(d["labels"]):
            k = max(k, int(_numpy(d["labels"]).max()) + 1)
    names = list(class_names) if class_names else [str(c) for c in range(max(k, 1))]
    colors = class_colors(max(k, 1))
    panels, present = [], []
    with_keypoints = any(d.get("keypoints") is not None for d in (truth, prediction))
    kpt_thr = kwargs.get("kpt_thr", 0.3)
    shown = ([f"score >= {score_thr:.2f}"] if score_thr > 0 else []) + \
        ([f"joints with score > {kpt_thr:.2f}"] if with_keypoints else [])
    predicted = f"prediction ({', '.join(shown)})" if shown else "prediction"
    for caption, d, thr in (("ground truth", truth, 0.0), (predicted, prediction, score_thr)):
        d = {key: v for key, v in d.items() if key in ("boxes", "labels", "scores", "masks", "keypoints")}
        panel = render_detections(image, **d, class_names=names, score_thr=thr, legend=False, **kwargs)
        panels.append(stack_header(panel, caption, []))    # above the panel: it hides no box tag
        labels, scores = _numpy(d.get("labels")), _numpy(d.get("scores"))
        if labels is not None:
            present.append(labels[scores >= thr] if scores is not None else labels)
    gap = np.full((panels[0].shape[0], 8, 3), 255, np.uint8)
    labels = np.concatenate(present).astype(np.int64) if present else np.zeros(0, np.int64)
    rows = _legend_rows(labels, names, colors) if any(d.get("boxes") is not None or d.get("masks") is not None
                                                    for d in (truth, prediction)) else []
    if with_keypoints:
        rows += KEYPOINT_LEGEND
    return stack_header(np.concatenate([panels[0], gap, panels[1]], axis=1), title, rows)


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
                    truth: dict | None = None, **kwargs) -> Path:
    """Write the drawing as a PNG at ``path`` (atomically) with the caption and legend in a band above it.

    ``prediction`` (and ``truth``, drawn to its left) may hold ``boxes`` / ``labels`` / ``scores`` /
    ``masks`` / ``keypoints``. Images smaller than ``min_side`` are enlarged first (an integer factor)
    so that labels stay legible. Returns the path.
    """
    from PIL import Image

    from vitlab.checkpoints.atomic import atomic_write
    keys = ("boxes", "labels", "scores", "masks", "keypoints")
    args = {k: v for k, v in (prediction or {}).items() if k in keys}
    enlarged, args = upscale(image, args, min_side)
    if truth is not None:
        _, gt = upscale(image, {k: v for k, v in truth.items() if k in keys}, min_side)
        picture = render_comparison(enlarged, gt, args, **kwargs)
    else:
        picture = render_detections(enlarged, **args, header=True, **kwargs)
    path = Path(path)
    atomic_write(path, lambda p: Image.fromarray(picture).save(p, format="PNG"))
    return path

"""Detection transforms (pure torch): mmdet's ``Resize``, ``RandomFlip``, ``Normalize`` and batch padding.

A transform is a callable ``t(image, target, generator=None) -> (image, target)`` where ``image``
is a float ``(3, H, W)`` tensor (0-255 before :class:`Normalize`) and ``target`` the dict of
:class:`~vitlab.data.coco.CocoDetection`: ``boxes`` (N, 4) xyxy, ``labels``, ``masks`` uint8
(N, H, W) or None, ``keypoints`` (N, K, 3) or None, ``crowd`` and ``meta``. Every random choice is
drawn from ``generator`` (the sample's ``torch.Generator`` of the seeded-sample protocol in
:mod:`vitlab.data.datasets`), so the augmentation of a sample is a function of its seed: the same
whatever the number of workers, and exact on resume. Without a generator, torch's global
generator is used (like :mod:`vitlab.data.transforms`).

Conventions (mmdetection 2.x, ``mmdet/datasets/pipelines/transforms.py``; mmcv ``imrescale``):

* keep-ratio resize to ``img_scale = (long_max, short_target)``: scale factor
  ``min(long_max / long_side, short_target / short_side)``, new size ``int(w * f + 0.5)``,
  ``int(h * f + 0.5)``; boxes scaled by the per-axis factors ``(new_w / w, new_h / h)`` and clipped
  to the image; images bilinear (antialiased when shrinking), masks nearest, keypoints scaled.
* multi-scale ``'value'`` mode picks one of the given scales; ``'range'`` draws the long and the
  short edge uniformly (integers, inclusive) between the given extremes.
* horizontal flip of boxes as mmdet: ``x1' = w - x2``, ``x2' = w - x1``; keypoints ``x' = w - x``
  (detectron2's ``HFlipTransform``, consistent with the boxes) with the left/right pairs swapped;
  invisible keypoints (v = 0) stay (0, 0, 0).
* normalisation with mmdet's ImageNet statistics on 0-255 pixels (RGB order).
* :func:`collate_detection` pads with zeros at the bottom and right to a multiple of 32 (mmdet's
  ``Pad(size_divisor=32)`` followed by its collate): each meta gets ``pad_shape`` (its own image
  padded to the divisor, as mmdet) and ``batch_input_shape`` (the padded batch size).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .folder import split_skipped

MMDET_MEAN = (123.675, 116.28, 103.53)
MMDET_STD = (58.395, 57.12, 57.375)
# COCO's 17 keypoints (0-based): eyes, ears, shoulders, elbows, wrists, hips, knees, ankles
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))


def rescale_size(w: int, h: int, scale: Sequence[int]) -> tuple[int, int, float]:
    """Keep-ratio target size ``(new_w, new_h, factor)`` for ``scale = (long_max, short_target)`` (mmcv)."""
    long_max, short_target = max(scale), min(scale)
    factor = min(long_max / max(h, w), short_target / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5), factor


def _resize_image(img: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    shrink = size[0] < img.shape[-2] or size[1] < img.shape[-1]
    return F.interpolate(img[None].float(), size=size, mode="bilinear", align_corners=False, antialias=shrink)[0]


def _resize_masks(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(masks.shape[-2:]) == tuple(size):
        return masks
    if masks.shape[0] == 0:
        return masks.new_zeros((0, *size))
    return F.interpolate(masks[None].float(), size=size, mode="nearest")[0].to(masks.dtype)


class Resize:
    """mmdet's ``Resize``: ``img_scale`` one ``(long, short)`` pair or a list (multi-scale).

    ``multiscale_mode='value'`` picks one pair of the list; ``'range'`` draws the long and short
    edges between the list's extremes. ``keep_ratio=False`` resizes to exactly ``w = long``,
    ``h = short`` of the chosen pair, as mmdet does.
    """

    def __init__(self, img_scale=(1333, 800), multiscale_mode: str = "value", keep_ratio: bool = True):
        scales = [img_scale] if isinstance(img_scale[0], (int, float)) else list(img_scale)
        if not scales or any(len(s) != 2 or min(s) <= 0 for s in scales):
            raise ValueError(f"img_scale must be a (long, short) pair of positive sizes or a list of them, "
                             f"got {img_scale!r}")
        if multiscale_mode not in ("value", "range"):
            raise ValueError(f"multiscale_mode must be 'value' or 'range', got {multiscale_mode!r}")
        if multiscale_mode == "range" and len(scales) != 2:
            raise ValueError(f"multiscale_mode='range' needs exactly two scales (the extremes), got {len(scales)}")
        self.img_scales = [tuple(int(v) for v in s) for s in scales]
        self.multiscale_mode, self.keep_ratio = multiscale_mode, keep_ratio

    def choose_scale(self, generator=None) -> tuple[int, int]:
        """The ``(long, short)`` scale of one sample, drawn from ``generator``."""
        if len(self.img_scales) == 1:
            return self.img_scales[0]
        if self.multiscale_mode == "value":
            return self.img_scales[int(torch.randint(len(self.img_scales), (), generator=generator))]
        longs = [max(s) for s in self.img_scales]
        shorts = [min(s) for s in self.img_scales]
        long = int(torch.randint(min(longs), max(longs) + 1, (), generator=generator))
        short = int(torch.randint(min(shorts), max(shorts) + 1, (), generator=generator))
        return long, short

    def __call__(self, image: torch.Tensor, target: dict, generator=None):
        h, w = image.shape[-2:]
        scale = self.choose_scale(generator)
        if self.keep_ratio:
            new_w, new_h, _ = rescale_size(w, h, scale)
        else:
            new_w, new_h = scale
        sx, sy = new_w / w, new_h / h
        image = _resize_image(image, (new_h, new_w))
        target = dict(target)
        boxes = target["boxes"] * torch.tensor([sx, sy, sx, sy], dtype=target["boxes"].dtype)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, new_w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, new_h)
        target["boxes"] = boxes
        if target.get("masks") is not None:
            target["masks"] = _resize_masks(target["masks"], (new_h, new_w))
        if target.get("keypoints") is not None:
            kp = target["keypoints"].clone()
            vis = kp[..., 2] > 0
            kp[..., 0] = torch.where(vis, kp[..., 0] * sx, torch.zeros_like(kp[..., 0]))
            kp[..., 1] = torch.where(vis, kp[..., 1] * sy, torch.zeros_like(kp[..., 1]))
            target["keypoints"] = kp
        meta = dict(target["meta"])
        h0, w0 = meta["orig_size"]
        meta["img_size"] = (new_h, new_w)
        meta["scale_factor"] = (new_w / w0, new_h / h0)
        target["meta"] = meta
        return image, target

    def __repr__(self) -> str:
        return (f"Resize(img_scale={self.img_scales}, multiscale_mode={self.multiscale_mode!r}, "
                f"keep_ratio={self.keep_ratio})")


def flip_keypoints(keypoints: torch.Tensor, width: float, flip_pairs=COCO_FLIP_PAIRS) -> torch.Tensor:
    """Mirror (N, K, 3) keypoints in an image of ``width``: ``x' = width - x``, left/right swapped, v = 0 kept at 0."""
    kp = keypoints.clone()
    vis = kp[..., 2] > 0
    kp[..., 0] = torch.where(vis, width - kp[..., 0], torch.zeros_like(kp[..., 0]))
    perm = list(range(kp.shape[1]))
    for a, b in flip_pairs:
        if max(a, b) >= len(perm):
            raise ValueError(f"flip pair ({a}, {b}) out of range for {len(perm)} keypoints")
        perm[a], perm[b] = b, a
    return kp[:, perm]


def flip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """mmdet's horizontal ``bbox_flip``: ``x1' = w - x2``, ``x2' = w - x1``."""
    out = boxes.clone()
    out[:, 0] = width - boxes[:, 2]
    out[:, 2] = width - boxes[:, 0]
    return out


class RandomFlip:
    """Horizontal flip with probability ``prob`` (one draw from the generator per sample, always made)."""

    def __init__(self, prob: float = 0.5, flip_pairs=COCO_FLIP_PAIRS):
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"flip prob must be in [0, 1], got {prob}")
        self.prob, self.flip_pairs = prob, tuple(tuple(p) for p in flip_pairs)

    def __call__(self, image: torch.Tensor, target: dict, generator=None):
        flip = float(torch.rand((), generator=generator)) < self.prob
        target = dict(target)
        meta = dict(target["meta"])
        if flip:
            w = image.shape[-1]
            image = image.flip(-1)
            target["boxes"] = flip_boxes(target["boxes"], w)
            if target.get("masks") is not None:
                target["masks"] = target["masks"].flip(-1)
            if target.get("keypoints") is not None:
                target["keypoints"] = flip_keypoints(target["keypoints"], w, self.flip_pairs)
            meta["flip"] = not meta.get("flip", False)
        target["meta"] = meta
        return image, target

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


class Normalize:
    """``(image - mean) / std`` per channel; statistics on the 0-255 scale (mmdet), or the 0-1 scale (timm)
    when every value is at most 1."""

    def __init__(self, mean=MMDET_MEAN, std=MMDET_STD):
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must be three values with std > 0, got mean={mean}, std={std}")
        if max(mean + std) <= 1.0:
            mean, std = [v * 255.0 for v in mean], [v * 255.0 for v in std]
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: torch.Tensor, target: dict, generator=None):
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return (image.float() - mean) / std, target

    def denormalize(self, image: torch.Tensor) -> torch.Tensor:
        """Back to a uint8 (3, H, W) image."""
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (image * std + mean).clamp(0, 255).round().to(torch.uint8)

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class DetCompose:
    """Apply detection transforms in order, passing the sample's generator to each."""

    def __init__(self, transforms: Sequence):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, image, target, generator=None):
        for t in self.transforms:
            image, target = t(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        return "DetCompose(" + ", ".join(repr(t) for t in self.transforms) + ")"


def build_detection_transform(train: bool, scales: int | Sequence[int] = (800,), max_size: int = 1333,
                              flip_prob: float = 0.5, mean=MMDET_MEAN, std=MMDET_STD,
                              multiscale_mode: str = "value") -> DetCompose:
    """mmdet's pipeline: keep-ratio ``Resize`` to short side ``scales`` (one chosen per sample when several;
    e.g. ``range(480, 801, 32)`` with ``max_size=1333`` for the 3x schedules), ``RandomFlip``, ``Normalize``.

    Evaluation (``train=False``) resizes to the largest of ``scales`` and does not flip.
    """
    scales = [int(scales)] if isinstance(scales, (int, float)) else [int(s) for s in scales]
    if not scales:
        raise ValueError("scales must name at least one short-side size")
    if train:
        resize = Resize([(max_size, s) for s in scales], multiscale_mode=multiscale_mode)
        return DetCompose([resize, RandomFlip(flip_prob), Normalize(mean, std)])
    return DetCompose([Resize((max_size, max(scales))), Normalize(mean, std)])


def collate_detection(batch, size_divisor: int = 32):
    """``[(image, target), ...]`` -> ``((images (B, 3, Hp, Wp), metas), targets, skipped)``.

    Images are padded with zeros at the bottom and right to the batch's largest size rounded up to
    ``size_divisor``; each meta gains ``pad_shape`` (its own size rounded up, as mmdet) and
    ``batch_input_shape`` ``(Hp, Wp)``. ``None`` and :class:`~vitlab.data.folder.Skipped` samples are
    dropped and named in ``skipped``; inputs and targets are None when nothing is left.
    """
    kept, skipped = split_skipped(batch)
    if not kept:
        return None, None, skipped

    def up(v: int) -> int:
        return int(math.ceil(v / size_divisor) * size_divisor)

    hp = up(max(img.shape[-2] for img, _ in kept))
    wp = up(max(img.shape[-1] for img, _ in kept))
    images = kept[0][0].new_zeros((len(kept), kept[0][0].shape[0], hp, wp))
    metas, targets = [], []
    for i, (img, target) in enumerate(kept):
        h, w = img.shape[-2:]
        images[i, :, :h, :w] = img
        meta = dict(target["meta"], pad_shape=(up(h), up(w)), batch_input_shape=(hp, wp))
        target = dict(target, meta=meta)
        metas.append(meta)
        targets.append(target)
    return (images, metas), targets, skipped

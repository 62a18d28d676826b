"""Pure-torch image transforms (no torchvision).

Every transform is a callable ``t(img, generator=None) -> img`` on float ``(C, H, W)`` tensors in
[0, 1] (before :class:`Normalize`). Randomness comes only from the ``generator`` argument, so a
sample's augmentation is a function of its seed: runs repeat exactly and resume exactly, whatever
the number of loader workers. :func:`to_tensor` converts PIL images, NumPy arrays and uint8
tensors first.

:func:`build_train_transform` with ``output="uint8"`` is the fast variant (timm's loader does the same):
the crop is resized by Pillow on uint8, RandAugment / colour jitter run as in the float pipeline and
are rounded back to uint8, and normalisation and random erasing are left to the training device
(:mod:`vitlab.data.device_prep`), in batch. The random draws are the same, in the same order, as the
float pipeline's, so a sample gets the same crop, flip and RandAugment ops from the same seed. With
``draft=True`` an image folder decodes JPEGs at 1/2, 1/4 or 1/8 scale when the crop allows it
(:mod:`vitlab.data.jpeg`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD

INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def to_tensor(img) -> torch.Tensor:
    """PIL image / (H, W[, C]) array / (C, H, W) tensor -> float (C, H, W) in [0, 1]."""
    if isinstance(img, torch.Tensor):
        t = img
        if t.ndim == 2:
            t = t.unsqueeze(0)
        return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()
    if not isinstance(img, np.ndarray):  # PIL
        img = np.array(img)
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {img.shape}")
    t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)
    return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()


def to_uint8(img) -> torch.Tensor:
    """PIL image / (H, W[, C]) array / (C, H, W) tensor -> uint8 (C, H, W).

    Float input (in [0, 1]) is rounded to levels; other integer types are clipped to 0..255."""
    if not isinstance(img, torch.Tensor):
        arr = np.array(img)  # PIL -> array (a copy)
        if arr.dtype == np.uint8:
            return pil_to_uint8(arr)
        if arr.ndim not in (2, 3):
            raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
        img = torch.from_numpy(np.ascontiguousarray(arr if arr.ndim == 2 else arr.transpose(2, 0, 1)))
    t = img.unsqueeze(0) if img.ndim == 2 else img
    if t.dtype == torch.uint8:
        return t
    return quantize(t) if t.is_floating_point() else t.clamp(0, 255).to(torch.uint8)


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Float image in [0, 1] -> uint8 levels (rounded to nearest)."""
    return img.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


def _rand(generator) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(lo: float, hi: float, generator) -> float:
    return lo + (hi - lo) * _rand(generator)


def resize(img: torch.Tensor, size: tuple[int, int], interpolation: str = "bilinear") -> torch.Tensor:
    """Resize a (C, H, W) tensor; bilinear/bicubic antialias when shrinking (like PIL)."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if tuple(img.shape[-2:]) == tuple(size):
        return img
    kw = {} if interpolation == "nearest" else {"align_corners": False, "antialias": True}
    out = F.interpolate(img.unsqueeze(0), size=size, mode=interpolation, **kw)[0]
    return out.clamp_(0.0, 1.0) if interpolation == "bicubic" else out


def match_channels(stats, n: int) -> tuple[float, ...]:
    """Per-channel statistics for ``n`` channels: as given when the count matches, else their mean repeated."""
    stats = tuple(float(v) for v in stats)
    return stats if len(stats) == n else tuple(sum(stats) / len(stats) for _ in range(n))


class Compose:
    def __init__(self, transforms: Sequence):
        self.transforms = [t for t in transforms if t is not None]

    def __call__(self, img, generator=None):
        for t in self.transforms:
            img = t(img, generator)
        return img

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"

    def set_normalization(self, mean, std) -> None:
        """Replace the statistics of the :class:`Normalize` step (e.g. with a dataset's own)."""
        for i, t in enumerate(self.transforms):
            if isinstance(t, Normalize):
                self.transforms[i] = Normalize(mean, std)


class ToTensor:
    def __call__(self, img, generator=None):
        return to_tensor(img)


class ToUint8(ToTensor):
    """:class:`ToTensor` with uint8 (C, H, W) out (the fast pipeline's first step; a conversion step like it)."""

    def __call__(self, img, generator=None):
        return to_uint8(img)


class OnFloat:
    """Run a float-image transform on a uint8 image: to [0, 1], ``transform``, rounded back to uint8."""

    def __init__(self, transform):
        self.transform = transform

    def __call__(self, img, generator=None):
        if img.dtype != torch.uint8:
            return self.transform(img, generator)
        return quantize(self.transform(img.float().div(255.0), generator))

    def __repr__(self) -> str:
        return f"OnFloat({self.transform!r})"


def pil_resized_crop(img: torch.Tensor, box, size: tuple[int, int], interpolation: str = "bicubic") -> torch.Tensor:
    """Resize the region ``box = (left, top, right, bottom)`` (floats allowed) of a uint8 (C, H, W) image
    to ``size = (h, w)`` with Pillow (antialiased when shrinking); 1- and 3-channel images."""
    from PIL import Image
    if img.dtype != torch.uint8 or img.shape[0] not in (1, 3):
        raise ValueError(f"pil_resized_crop takes a uint8 1- or 3-channel image, got {img.dtype} {tuple(img.shape)}")
    arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).contiguous().numpy()
    out = Image.fromarray(arr).resize((size[1], size[0]), PIL_RESAMPLE[interpolation], box=tuple(box))
    return pil_to_uint8(out)


def pil_to_uint8(im) -> torch.Tensor:
    """PIL image or uint8 (H, W[, C]) array -> uint8 (C, H, W) tensor (no float conversion)."""
    arr = im if isinstance(im, np.ndarray) else np.array(im)
    if arr.ndim not in (2, 3):
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {arr.shape}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


PIL_RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values


class ToChannels:
    """Repeat a 1-channel image to ``n`` channels (or check the count matches)."""

    def __init__(self, n: int):
        self.n = n

    def __call__(self, img, generator=None):
        if img.shape[0] == self.n:
            return img
        if img.shape[0] == 1:
            return img.expand(self.n, -1, -1).contiguous()
        if self.n == 1 and img.shape[0] == 3:
            if img.dtype == torch.uint8:
                return img.float().mean(0, keepdim=True).round_().to(torch.uint8)
            return img.mean(0, keepdim=True)
        raise ValueError(f"cannot turn a {img.shape[0]}-channel image into {self.n} channels")


class RandomResizedCrop:
    """Crop a random area fraction in ``scale`` with aspect ratio in ``ratio`` (log-uniform), resize to ``size``.

    Float images are resized in torch; uint8 1- or 3-channel images by Pillow and stay uint8. ``draft``: an
    image folder may decode a JPEG at reduced scale for this crop (:mod:`vitlab.data.jpeg`); the box is the
    same either way.
    """

    def __init__(self, size: int | tuple[int, int], scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 interpolation: str = "bicubic", *, draft: bool = False):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.scale, self.ratio, self.interpolation = tuple(scale), tuple(ratio), interpolation
        self.draft = draft

    def box(self, h: int, w: int, generator=None) -> tuple[int, int, int, int]:
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * _uniform(*self.scale, generator)
            aspect = math.exp(_uniform(*log_ratio, generator))
            cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (), generator=generator))
                left = int(torch.randint(0, w - cw + 1, (), generator=generator))
                return top, left, ch, cw
        # fallback: centre crop with the ratio clamped into range
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            cw, ch = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            ch, cw = h, int(round(h * self.ratio[1]))
        else:
            cw, ch = w, h
        return (h - ch) // 2, (w - cw) // 2, ch, cw

    def __call__(self, img, generator=None):
        top, left, ch, cw = self.box(img.shape[-2], img.shape[-1], generator)
        if img.dtype == torch.uint8:
            if img.shape[0] in (1, 3):
                return pil_resized_crop(img, (left, top, left + cw, top + ch), self.size, self.interpolation)
            crop = img[:, top:top + ch, left:left + cw].float().div(255.0)
            return quantize(resize(crop, self.size, self.interpolation))
        return resize(img[:, top:top + ch, left:left + cw], self.size, self.interpolation)

    def __repr__(self) -> str:
        return (f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}"
                + (", draft" if self.draft else "") + ")")


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img, generator=None):
        return img.flip(-1) if self.p > 0 and _rand(generator) < self.p else img


class ColorJitter:
    """Random brightness, contrast and saturation factors in [1 - s, 1 + s], applied in a random order."""

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        self.strengths = {"brightness": brightness, "contrast": contrast, "saturation": saturation}

    def __call__(self, img, generator=None):
        order = torch.randperm(3, generator=generator).tolist()
        names = list(self.strengths)
        for i in order:
            s = self.strengths[names[i]]
            if s <= 0:
                continue
            f = _uniform(max(0.0, 1 - s), 1 + s, generator)
            img = ADJUST[names[i]](img, f)
        return img


def grayscale(img: torch.Tensor) -> torch.Tensor:
    if img.shape[0] == 1:
        return img
    r, g, b = img[0], img[1], img[2]
    return (0.299 * r + 0.587 * g + 0.114 * b).unsqueeze(0)


def blend(a: torch.Tensor, b: torch.Tensor, factor: float) -> torch.Tensor:
    """``b + factor * (a - b)`` clamped to [0, 1] (PIL ImageEnhance semantics, ``a`` the image)."""
    return (b + factor * (a - b)).clamp(0.0, 1.0)


ADJUST = {
    "brightness": lambda img, f: blend(img, torch.zeros_like(img), f),
    "contrast": lambda img, f: blend(img, grayscale(img).mean().expand_as(img), f),
    "saturation": lambda img, f: blend(img, grayscale(img).expand_as(img), f),
}


class Normalize:
    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, img, generator=None):
        if img.shape[0] != self.mean.shape[0]:
            raise ValueError(f"Normalize has {self.mean.shape[0]} channel statistics but the image has "
                             f"{img.shape[0]} channels")
        return (img - self.mean) / self.std


class RandomErasing:
    """Random erasing (Zhong et al., arXiv 1708.04896), timm's 'pixel' mode: per-pixel normal noise.

    Runs after normalisation; ``prob`` is the chance to erase, area fraction in ``area``,
    log-uniform aspect in ``ratio``, ``count`` boxes.
    """

    def __init__(self, prob: float = 0.25, area=(0.02, 1 / 3), ratio=(0.3, 3.3), mode: str = "pixel", count: int = 1):
        if mode not in ("pixel", "rand", "const"):
            raise ValueError(f"random erasing mode must be pixel, rand or const, got {mode!r}")
        self.prob, self.area, self.ratio, self.mode, self.count = prob, area, ratio, mode, count

    def __call__(self, img, generator=None):
        if self.prob <= 0 or _rand(generator) >= self.prob:
            return img
        img = img.clone()
        c, h, w = img.shape
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(self.count):
            for _ in range(10):
                target = h * w * _uniform(*self.area, generator) / self.count
                aspect = math.exp(_uniform(*log_ratio, generator))
                eh, ew = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
                if 0 < eh < h and 0 < ew < w:
                    top = int(torch.randint(0, h - eh + 1, (), generator=generator))
                    left = int(torch.randint(0, w - ew + 1, (), generator=generator))
                    if self.mode == "pixel":
                        fill = torch.randn((c, eh, ew), generator=generator)
                    elif self.mode == "rand":
                        fill = torch.randn((c, 1, 1), generator=generator).expand(c, eh, ew)
                    else:
                        fill = torch.zeros((c, eh, ew))
                    img[:, top:top + eh, left:left + ew] = fill
                    break
        return img


class ResizeCenterCrop:
    """Evaluation transform: resize the short side to ``size / crop_pct``, then centre-crop ``size``."""

    def __init__(self, size: int | tuple[int, int], crop_pct: float = 0.875, interpolation: str = "bicubic"):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        if not 0 < crop_pct <= 2:
            raise ValueError(f"crop_pct must be in (0, 2], got {crop_pct}")
        self.crop_pct, self.interpolation = crop_pct, interpolation

    def __call__(self, img, generator=None):
        h, w = img.shape[-2:]
        scale_to = math.floor(max(self.size) / self.crop_pct)
        if h <= w:
            nh, nw = scale_to, max(1, int(round(w * scale_to / h)))
        else:
            nh, nw = max(1, int(round(h * scale_to / w))), scale_to
        img = resize(img, (nh, nw), self.interpolation)
        top, left = (nh - self.size[0]) // 2, (nw - self.size[1]) // 2
        if top < 0 or left < 0:  # crop_pct > 1: pad by resizing to at least the target
            img = resize(img, (max(nh, self.size[0]), max(nw, self.size[1])), self.interpolation)
            top, left = max(top, 0), max(left, 0)
        return img[:, top:top + self.size[0], left:left + self.size[1]]

    def __repr__(self) -> str:
        return f"ResizeCenterCrop(size={self.size}, crop_pct={self.crop_pct}, {self.interpolation})"


def build_train_transform(img_size: int | tuple[int, int], mean, std, in_chans: int = 3, scale=(0.08, 1.0),
                          ratio=(3 / 4, 4 / 3), hflip: float = 0.5, color_jitter: float = 0.0,
                          auto_augment: str | None = None, reprob: float = 0.0, remode: str = "pixel",
                          recount: int = 1, interpolation: str = "bicubic", *, output: str = "float",
                          draft: bool = False) -> Compose:
    """timm-style training pipeline: random resized crop, flip, RandAugment or colour jitter, normalise, erase.

    ``output="uint8"``: the same draws, uint8 crops out, without normalising and erasing (the training
    device does both, :class:`vitlab.data.device_prep.BatchPrep`); ``draft``: JPEG draft decoding in
    image folders (uint8 output only).
    """
    from .randaugment import RandAugment
    if output not in ("float", "uint8"):
        raise ValueError(f"output must be 'float' or 'uint8', got {output!r}")
    if draft and output != "uint8":
        raise ValueError("draft decoding needs output='uint8' (the crop is resized by Pillow on uint8)")
    fast = output == "uint8"
    steps = [ToUint8() if fast else ToTensor(), ToChannels(in_chans),
             RandomResizedCrop(img_size, scale, ratio, interpolation, draft=draft)]
    if hflip > 0:
        steps.append(RandomHorizontalFlip(hflip))
    colour = None
    if auto_augment:
        # timm's create_transform: fill with the mean colour, the train interpolation unless it is "random"
        hparams = {"fill": tuple(min(255, round(255 * float(v))) for v in mean)}
        if interpolation in ("bilinear", "bicubic"):
            hparams["interpolation"] = interpolation
        colour = RandAugment.from_string(auto_augment, **hparams)
    elif color_jitter > 0:
        colour = ColorJitter(color_jitter, color_jitter, color_jitter)
    if colour is not None:
        steps.append(OnFloat(colour) if fast else colour)
    if fast:
        return Compose(steps)
    steps.append(Normalize(mean, std))
    if reprob > 0:
        steps.append(RandomErasing(reprob, mode=remode, count=recount))
    return Compose(steps)


def build_eval_transform(pretrained_cfg: dict, in_chans: int | None = None, mean=None, std=None,
                         img_size: int | None = None, crop_pct: float | None = None) -> Compose:
    """Evaluation pipeline from a model's ``pretrained_cfg`` (input_size, crop_pct, interpolation, mean, std)."""
    size = img_size or tuple(pretrained_cfg.get("input_size", (3, 224, 224))[-2:])
    chans = in_chans or pretrained_cfg.get("input_size", (3,))[0]
    mean = mean if mean is not None else pretrained_cfg.get("mean", IMAGENET_MEAN)
    std = std if std is not None else pretrained_cfg.get("std", IMAGENET_STD)
    return Compose([ToTensor(), ToChannels(chans),
                    ResizeCenterCrop(size, crop_pct or pretrained_cfg.get("crop_pct", 0.875),
                                     pretrained_cfg.get("interpolation", "bicubic")),
                    Normalize(mean, std)])

"""DINO multi-crop augmentation (Caron et al., arXiv 2104.14294, App. D; EsViT Sec. 3), seeded per sample.

Two global crops (scale 0.4-1) and ``n_local`` local crops (scale 0.05-0.4) of every image, each
with a horizontal flip, colour jitter (p=0.8: brightness 0.4, contrast 0.4, saturation 0.2, hue
0.1), grayscale (p=0.2), Gaussian blur (p = 1.0 / 0.1 / 0.5 for global 1 / global 2 / locals) and
solarisation (p=0.2, second global crop only), then normalisation.

The work is split in two, so it is exact, fast and independent of the loader workers:

* :class:`MultiCropTransform` runs per sample in the DataLoader (a dataset's ``train_transform``):
  it takes random-resized crops from the *original* image (its own size and aspect ratio; crops
  resized with antialiasing, as PIL does) and draws every random photometric parameter, all from the
  sample's own generator. It returns the crops in [0, 1] and the parameters, with each crop's
  geometry (box in the original image, flip) for the correspondence evaluator.
* :func:`apply_photometric` applies the drawn parameters to a whole batch of crops at once, on the
  training device (a GPU does it in a few kernels), then normalises.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD

from .transforms import RandomResizedCrop, resize, to_tensor


@dataclass
class MultiCropConfig:
    global_size: int = 224
    local_size: int = 96
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)   # global 1, global 2, locals
    blur_sigma: tuple[float, float] = (0.1, 2.0)            # in pixels at 224 px; scaled with the crop size
    solarize_p: float = 0.2                                  # second global crop
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def views(self) -> list[tuple[int, tuple[float, float], float, float]]:
        """(size, scale, blur probability, solarisation probability) of every crop, in order."""
        return ([(self.global_size, self.global_scale, self.blur_p[0], 0.0),
                 (self.global_size, self.global_scale, self.blur_p[1], self.solarize_p)]
                + [(self.local_size, self.local_scale, self.blur_p[2], 0.0)] * self.n_local)


def _u(lo: float, hi: float, g: torch.Generator) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def draw_photometric(cfg: MultiCropConfig, size: int, blur_p: float, solarize_p: float,
                     g: torch.Generator) -> dict[str, torch.Tensor]:
    """The random photometric parameters of one crop (scalars; collated into per-batch vectors)."""
    sigma_lo, sigma_hi = (s * size / 224 for s in cfg.blur_sigma)
    values = {
        "jitter": float(torch.rand((), generator=g) < cfg.jitter_p),
        "brightness": _u(1 - cfg.brightness, 1 + cfg.brightness, g),
        "contrast": _u(1 - cfg.contrast, 1 + cfg.contrast, g),
        "saturation": _u(1 - cfg.saturation, 1 + cfg.saturation, g),
        "hue": _u(-cfg.hue, cfg.hue, g),
        "gray": float(torch.rand((), generator=g) < cfg.grayscale_p),
        "blur": float(torch.rand((), generator=g) < blur_p),
        "sigma": _u(sigma_lo, sigma_hi, g),
        "sigma_max": sigma_hi,
        "solarize": float(torch.rand((), generator=g) < solarize_p),
    }
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in values.items()}


def crop_geometry(top: int, left: int, h: int, w: int, flip: bool, image_hw) -> dict[str, torch.Tensor]:
    """Where a crop came from: ``box`` (top, left, height, width) in the original image's pixels, ``flip``
    (1 = mirrored after cropping) and ``image_hw``; what :mod:`vitlab.ssl.correspondence` needs to know which
    tokens of two views show the same place."""
    return {"box": torch.tensor([top, left, h, w], dtype=torch.float32), "flip": torch.tensor(float(flip)),
            "image_hw": torch.tensor([float(image_hw[0]), float(image_hw[1])])}


class MultiCropTransform:
    """``(image (C, H, W) uint8 or float, generator) -> (crops [(C, s, s) in [0, 1]], params [dict])``."""

    def __init__(self, cfg: MultiCropConfig | None = None, in_chans: int | None = None):
        self.cfg = cfg or MultiCropConfig()
        self.in_chans = in_chans
        self._crops = {scale: RandomResizedCrop(1, scale, self.cfg.ratio) for scale in
                       {tuple(self.cfg.global_scale), tuple(self.cfg.local_scale)}}

    def __call__(self, img, generator: torch.Generator | None = None):
        x = to_tensor(img)
        if self.in_chans == 1 and x.shape[0] == 3:
            x = x.mean(0, keepdim=True)
        crops, params = [], []
        for size, scale, blur_p, solarize_p in self.cfg.views():
            top, left, h, w = self._crops[tuple(scale)].box(x.shape[-2], x.shape[-1], generator)
            crop = resize(x[:, top:top + h, left:left + w], (size, size), "bilinear")
            flip = float(torch.rand((), generator=generator)) < 0.5
            if flip:
                crop = crop.flip(-1)
            crops.append(crop.clamp_(0.0, 1.0))
            params.append({**draw_photometric(self.cfg, size, blur_p, solarize_p, generator),
                           **crop_geometry(top, left, h, w, flip, x.shape[-2:])})
        return crops, params


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def _col(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.to(x).view(-1, 1, 1, 1)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)


def color_jitter(x: torch.Tensor, p: dict) -> torch.Tensor:
    """Brightness, contrast, saturation and hue (a YIQ rotation) per image, where ``p['jitter']`` is set."""
    out = x * _col(p["brightness"], x)
    mean = _gray(out).mean((1, 2, 3), keepdim=True)
    out = (out - mean) * _col(p["contrast"], x) + mean
    if x.shape[1] == 3:
        out = (out - _gray(out)) * _col(p["saturation"], x) + _gray(out)
        out = _rotate_hue(out, (p["hue"] * 2 * math.pi).to(x))
    apply = _col(p["jitter"], x)
    return apply * out.clamp(0, 1) + (1 - apply) * x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, apply: torch.Tensor, sigma_max: float) -> torch.Tensor:
    """Separable Gaussian blur with a sigma per image (reflect padding), where ``apply`` is set."""
    if not bool(apply.any()):
        return x
    n, c, h, w = x.shape
    radius = max(1, int(math.ceil(3 * sigma_max)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t[None] / sigma.to(x).clamp_min(1e-3)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)             # (n*c, K)
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect" if w > radius else "replicate"),
                 k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect" if h > radius else "replicate"),
                 k[:, None, :, None], groups=n * c)
    return torch.where(apply.to(x.device).bool()[:, None, None, None], y.reshape(n, c, h, w), x)


def apply_photometric(x: torch.Tensor, p: dict[str, torch.Tensor], mean, std, out_chans: int | None = None):
    """A batch of crops (B, C, s, s) in [0, 1] with their collated parameters -> normalised crops."""
    x = color_jitter(x, p)
    if x.shape[1] > 1:
        gray = _col(p["gray"], x)
        x = gray * _gray(x).expand_as(x) + (1 - gray) * x
    x = gaussian_blur(x, p["sigma"], p["blur"], float(p["sigma_max"].max()))
    solar = p["solarize"].to(x.device).bool()[:, None, None, None]
    x = torch.where(solar & (x >= 0.5), 1 - x, x)
    return normalize_images(x, mean, std, out_chans)


def normalize_images(x: torch.Tensor, mean, std, out_chans: int | None = None) -> torch.Tensor:
    """(x - mean) / std per channel; a one-channel batch is repeated to ``out_chans`` channels (and uses the
    mean of the given statistics)."""
    c = x.shape[1]
    mean_t, std_t = x.new_tensor(mean), x.new_tensor(std)
    if c == 1 and len(mean) != 1:
        mean_t, std_t = mean_t.mean().view(1), std_t.mean().view(1)
    x = (x - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)
    if out_chans is not None and x.shape[1] != out_chans:
        if x.shape[1] != 1:
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {out_chans} channels")
        x = x.expand(-1, out_chans, -1, -1)
    return x


def multicrop_batch(samples: list, mean, std, device: torch.device, out_chans: int | None = None):
    """Collated ``(crops, params)`` of a batch -> normalised crops on ``device`` (global crops first)."""
    crops, params = samples
    return [apply_photometric(c.to(device, non_blocking=True), {k: v.to(device) for k, v in p.items()}, mean, std,
                              out_chans) for c, p in zip(crops, params)]

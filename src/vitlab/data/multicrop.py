"""DINO multi-crop augmentation in pure torch, batched (Caron et al., arXiv 2104.14294, App. D; Sec. 3 of EsViT).

Two global crops (scale 0.4-1) and ``n_local`` local crops (scale 0.05-0.4) of every image, each
with a horizontal flip, colour jitter (p=0.8: brightness 0.4, contrast 0.4, saturation 0.2,
hue 0.1), grayscale (p=0.2), Gaussian blur (p = 1.0 / 0.1 / 0.5 for global 1 / global 2 /
locals) and solarisation (p=0.2, second global crop only), then normalisation.

Everything runs on a whole batch at once: crops are resampled with one ``grid_sample`` call from
per-image affine boxes, and the blur is a grouped convolution with per-image kernels, so the
augmentation costs little next to the network even on a CPU. Randomness comes from an explicit
``torch.Generator`` (reproducible, and exactly resumable per epoch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD


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


def random_resized_boxes(n: int, scale, ratio, generator: torch.Generator) -> torch.Tensor:
    """(n, 4) boxes (cx, cy, w, h) in [0, 1] image units with area in ``scale`` and aspect in ``ratio``."""
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = w / 2 + torch.rand(n, generator=generator) * (1 - w)
    cy = h / 2 + torch.rand(n, generator=generator) * (1 - h)
    return torch.stack([cx, cy, w, h], 1)


def crop_resize(images: torch.Tensor, boxes: torch.Tensor, size: int, flip: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling of one box per image to ``size x size`` (flip: bool per image)."""
    cx, cy, w, h = boxes.unbind(1)
    sx = torch.where(flip, -w, w)
    theta = torch.zeros(len(images), 2, 3, dtype=images.dtype)
    theta[:, 0, 0], theta[:, 0, 2] = sx, cx * 2 - 1
    theta[:, 1, 1], theta[:, 1, 2] = h, cy * 2 - 1
    grid = F.affine_grid(theta.to(images.device), [len(images), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def color_jitter(x: torch.Tensor, cfg: MultiCropConfig, generator: torch.Generator) -> torch.Tensor:
    """Brightness, contrast, saturation and hue (YIQ rotation) factors per image, applied with p=jitter_p."""
    n = len(x)

    def factor(strength):
        return torch.empty(n, 1, 1, 1).uniform_(1 - strength, 1 + strength, generator=generator).to(x)
    apply = (torch.rand(n, 1, 1, 1, generator=generator) < cfg.jitter_p).to(x)
    out = x * factor(cfg.brightness)
    mean = _gray(out).mean((1, 2, 3), keepdim=True)
    out = (out - mean) * factor(cfg.contrast) + mean
    if x.shape[1] == 3:
        out = (out - _gray(out)) * factor(cfg.saturation) + _gray(out)
        angle = (torch.empty(n).uniform_(-cfg.hue, cfg.hue, generator=generator) * 2 * math.pi).to(x)
        out = _rotate_hue(out, angle)
    out = out.clamp(0, 1)
    return apply * out + (1 - apply) * x


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    to_yiq = x.new_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x)
    c, s = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], 1)
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq)


def random_grayscale(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    apply = (torch.rand(len(x), 1, 1, 1, generator=generator) < p).to(x)
    return apply * _gray(x).expand_as(x) + (1 - apply) * x


def gaussian_blur(x: torch.Tensor, p: float, sigma_range, generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur with a random sigma per image, applied with probability p."""
    n, c, h, w = x.shape
    apply = torch.rand(n, generator=generator) < p
    sigma = torch.empty(n).uniform_(sigma_range[0], sigma_range[1], generator=generator)
    if not apply.any():
        return x
    radius = max(1, int(math.ceil(3 * sigma_range[1])))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None].to(x.dtype)) ** 2)
    k = (k / k.sum(1, keepdim=True)).to(x.device)                      # n, K
    k = k.repeat_interleave(c, 0)                                       # n*c, K
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect" if w > radius else "replicate"),
                 k[:, None, None, :], groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect" if h > radius else "replicate"),
                 k[:, None, :, None], groups=n * c)
    y = y.reshape(n, c, h, w)
    return torch.where(apply.to(x.device)[:, None, None, None], y, x)


def solarize(x: torch.Tensor, p: float, generator: torch.Generator, threshold: float = 0.5) -> torch.Tensor:
    apply = (torch.rand(len(x), 1, 1, 1, generator=generator) < p).to(x.device)
    return torch.where(apply & (x >= threshold), 1 - x, x)


class MultiCropAugmentation:
    """``__call__(images (B, C, H, W) float in [0, 1], generator) -> [global_1, global_2, local_1, ...]``."""

    def __init__(self, cfg: MultiCropConfig | None = None, out_chans: int | None = None):
        self.cfg = cfg or MultiCropConfig()
        self.out_chans = out_chans

    def _view(self, images, size, scale, blur_p, solarize_p, generator):
        cfg = self.cfg
        n = len(images)
        boxes = random_resized_boxes(n, scale, cfg.ratio, generator)
        flip = torch.rand(n, generator=generator) < 0.5
        x = crop_resize(images, boxes, size, flip)
        x = color_jitter(x, cfg, generator)
        x = random_grayscale(x, cfg.grayscale_p, generator)
        sigma = tuple(s * size / 224 for s in cfg.blur_sigma)
        x = gaussian_blur(x, blur_p, sigma, generator)
        if solarize_p > 0:
            x = solarize(x, solarize_p, generator)
        return self.normalize(x)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_images(x, self.cfg.mean, self.cfg.std, self.out_chans)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        if images.ndim != 4 or not images.is_floating_point():
            raise ValueError(f"MultiCropAugmentation expects float images (B, C, H, W) in [0, 1], got "
                             f"{tuple(images.shape)} {images.dtype}")
        cfg = self.cfg
        crops = [self._view(images, cfg.global_size, cfg.global_scale, cfg.blur_p[0], 0.0, generator),
                 self._view(images, cfg.global_size, cfg.global_scale, cfg.blur_p[1], cfg.solarize_p, generator)]
        crops += [self._view(images, cfg.local_size, cfg.local_scale, cfg.blur_p[2], 0.0, generator)
                  for _ in range(cfg.n_local)]
        return crops


def normalize_images(x: torch.Tensor, mean, std, out_chans: int | None = None) -> torch.Tensor:
    """(x - mean) / std per channel; a one-channel batch is repeated to ``out_chans`` channels (and uses the
    mean of the given statistics)."""
    c = x.shape[1]
    mean_t = x.new_tensor(mean)
    std_t = x.new_tensor(std)
    if c == 1 and len(mean) != 1:
        mean_t, std_t = mean_t.mean().view(1), std_t.mean().view(1)
    x = (x - mean_t.view(1, -1, 1, 1)) / std_t.view(1, -1, 1, 1)
    if out_chans is not None and x.shape[1] != out_chans:
        if x.shape[1] != 1:
            raise ValueError(f"cannot turn {x.shape[1]}-channel images into {out_chans} channels")
        x = x.expand(-1, out_chans, -1, -1)
    return x

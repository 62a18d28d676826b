"""RandAugment (Cubuk et al., arXiv 1909.13719) on float (C, H, W) tensors, configured by timm-style strings.

``rand-m9-mstd0.5-inc1``: ``m`` magnitude (0..10), ``n`` ops per image (default 2), ``mstd`` std of
Gaussian noise on the magnitude, ``inc1`` the "increasing" op set (stronger with larger m),
``p`` probability of applying each chosen op (default 0.5). Ops and ranges follow the paper /
timm's defaults: rotate 30 deg, shear 0.3, translate 0.45 of the size, posterize 4..8 bits,
solarize, enhance factors 1 +- 0.9.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .transforms import ADJUST, blend, grayscale

MAX_LEVEL = 10.0
FILL = 0.5  # grey fill for geometric ops (timm fills with the ImageNet mean, ~0.45)


def _affine(img: torch.Tensor, matrix: list[list[float]]) -> torch.Tensor:
    """Apply a 2x3 affine map given in normalised [-1, 1] coordinates (output -> input sampling)."""
    theta = torch.tensor(matrix, dtype=img.dtype).unsqueeze(0)
    grid = F.affine_grid(theta, [1, *img.shape], align_corners=False)
    ones = torch.ones_like(img[:1])
    out = F.grid_sample(torch.cat([img, ones]).unsqueeze(0), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)[0]
    mask = out[-1:]
    return out[:-1] + (1 - mask) * FILL


def rotate(img, degrees):
    a = math.radians(degrees)
    h, w = img.shape[-2:]
    r = h / w
    return _affine(img, [[math.cos(a), -math.sin(a) * r, 0], [math.sin(a) / r, math.cos(a), 0]])


def shear_x(img, s):
    h, w = img.shape[-2:]
    return _affine(img, [[1, s * h / w, 0], [0, 1, 0]])


def shear_y(img, s):
    h, w = img.shape[-2:]
    return _affine(img, [[1, 0, 0], [s * w / h, 1, 0]])


def translate_x(img, frac):
    return _affine(img, [[1, 0, 2 * frac], [0, 1, 0]])


def translate_y(img, frac):
    return _affine(img, [[1, 0, 0], [0, 1, 2 * frac]])


def posterize(img, bits):
    shift = 8 - int(bits)
    q = (img * 255).round().to(torch.uint8)
    return ((q >> shift) << shift).float() / 255


def solarize(img, threshold):
    return torch.where(img >= threshold, 1 - img, img)


def solarize_add(img, add, threshold=128 / 255):
    return torch.where(img < threshold, (img + add).clamp(0, 1), img)


def auto_contrast(img, _=None):
    lo = img.amin(dim=(-2, -1), keepdim=True)
    hi = img.amax(dim=(-2, -1), keepdim=True)
    scale = torch.where(hi > lo, 1 / (hi - lo).clamp_min(1e-6), torch.ones_like(hi))
    return torch.where(hi > lo, (img - lo) * scale, img)


def equalize(img, _=None):
    """Per-channel histogram equalisation on 256 levels (PIL ImageOps.equalize)."""
    q = (img * 255).round().long().clamp(0, 255)
    out = torch.empty_like(img)
    for c in range(img.shape[0]):
        hist = torch.bincount(q[c].flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = (hist.sum() - nonzero[-1]) // 255 if len(nonzero) else torch.tensor(0)
        if step == 0:
            out[c] = img[c]
            continue
        lut = ((torch.cumsum(hist, 0) - hist + step // 2) // step).clamp(0, 255)
        out[c] = lut[q[c]].float() / 255
    return out


def invert(img, _=None):
    return 1 - img


def sharpness(img, factor):
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=img.dtype) / 13
    c = img.shape[0]
    smooth = F.conv2d(F.pad(img.unsqueeze(0), (1, 1, 1, 1), mode="replicate"), kernel.expand(c, 1, 3, 3),
                      groups=c)[0]
    return blend(img, smooth, factor)


def _signed(v, generator):
    return -v if torch.rand((), generator=generator) < 0.5 else v


# name -> (op, magnitude -> argument)
def _enhance(level, gen):
    return 1.0 + _signed(level / MAX_LEVEL * 0.9, gen)


OPS = {
    "AutoContrast": (auto_contrast, lambda m, g: None),
    "Equalize": (equalize, lambda m, g: None),
    "Invert": (invert, lambda m, g: None),
    "Rotate": (rotate, lambda m, g: _signed(m / MAX_LEVEL * 30, g)),
    "PosterizeIncreasing": (posterize, lambda m, g: 4 - int(m / MAX_LEVEL * 4) + 4),
    "Posterize": (posterize, lambda m, g: int(m / MAX_LEVEL * 4) + 4),
    "SolarizeIncreasing": (solarize, lambda m, g: 1 - m / MAX_LEVEL),
    "Solarize": (solarize, lambda m, g: m / MAX_LEVEL),
    "SolarizeAdd": (solarize_add, lambda m, g: m / MAX_LEVEL * 110 / 255),
    "ColorIncreasing": (ADJUST["saturation"], _enhance),
    "Color": (ADJUST["saturation"], lambda m, g: m / MAX_LEVEL * 1.8 + 0.1),
    "ContrastIncreasing": (ADJUST["contrast"], _enhance),
    "Contrast": (ADJUST["contrast"], lambda m, g: m / MAX_LEVEL * 1.8 + 0.1),
    "BrightnessIncreasing": (ADJUST["brightness"], _enhance),
    "Brightness": (ADJUST["brightness"], lambda m, g: m / MAX_LEVEL * 1.8 + 0.1),
    "SharpnessIncreasing": (sharpness, _enhance),
    "Sharpness": (sharpness, lambda m, g: m / MAX_LEVEL * 1.8 + 0.1),
    "ShearX": (shear_x, lambda m, g: _signed(m / MAX_LEVEL * 0.3, g)),
    "ShearY": (shear_y, lambda m, g: _signed(m / MAX_LEVEL * 0.3, g)),
    "TranslateXRel": (translate_x, lambda m, g: _signed(m / MAX_LEVEL * 0.45, g)),
    "TranslateYRel": (translate_y, lambda m, g: _signed(m / MAX_LEVEL * 0.45, g)),
}
_COMMON = ["AutoContrast", "Equalize", "Invert", "Rotate", "SolarizeAdd", "ShearX", "ShearY", "TranslateXRel",
           "TranslateYRel"]
RAND_OPS = _COMMON + ["Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"]
RAND_OPS_INCREASING = _COMMON + ["PosterizeIncreasing", "SolarizeIncreasing", "ColorIncreasing",
                                 "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing"]


class RandAugment:
    """Apply ``num_ops`` ops drawn uniformly (with replacement), each with probability ``prob``."""

    def __init__(self, magnitude: float = 9, num_ops: int = 2, magnitude_std: float = 0.0, increasing: bool = False,
                 prob: float = 0.5):
        self.magnitude, self.num_ops, self.magnitude_std, self.prob = magnitude, num_ops, magnitude_std, prob
        self.ops = RAND_OPS_INCREASING if increasing else RAND_OPS

    @classmethod
    def from_string(cls, spec: str) -> "RandAugment":
        """Parse ``rand-m9-n2-mstd0.5-inc1-p0.5`` (every part after ``rand`` optional)."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"auto-augment string must start with 'rand' (e.g. 'rand-m9-mstd0.5-inc1'), got {spec!r}")
        kw = {}
        keys = {"mstd": ("magnitude_std", float), "m": ("magnitude", float), "n": ("num_ops", int),
                "inc": ("increasing", lambda v: bool(int(v))), "p": ("prob", float)}
        for part in parts[1:]:
            for prefix in ("mstd", "inc", "m", "n", "p"):
                if part.startswith(prefix):
                    try:
                        name, conv = keys[prefix]
                        kw[name] = conv(part[len(prefix):])
                    except ValueError as e:
                        raise ValueError(f"bad value in auto-augment part {part!r} of {spec!r}") from e
                    break
            else:
                raise ValueError(f"unknown auto-augment part {part!r} in {spec!r}; known: m, n, mstd, inc, p")
        return cls(**kw)

    def __call__(self, img, generator=None):
        idx = torch.randint(len(self.ops), (self.num_ops,), generator=generator).tolist()
        for i in idx:
            if self.prob < 1.0 and torch.rand((), generator=generator) >= self.prob:
                continue
            m = self.magnitude
            if self.magnitude_std > 0:
                m = m + self.magnitude_std * float(torch.randn((), generator=generator))
            m = min(MAX_LEVEL, max(0.0, m))
            op, arg = OPS[self.ops[i]]
            img = op(img, arg(m, generator))
        return img

    def __repr__(self) -> str:
        return (f"RandAugment(m={self.magnitude}, n={self.num_ops}, mstd={self.magnitude_std}, p={self.prob}, "
                f"ops={len(self.ops)})")

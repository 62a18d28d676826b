"""RandAugment (Cubuk et al., arXiv 1909.13719) on (C, H, W) tensors, configured by timm-style strings.

``rand-m9-mstd0.5-inc1`` means what it means in timm (``timm.data.rand_augment_transform``): ``m``
magnitude (0..10, default 10), ``n`` ops per image (default 2, drawn uniformly with replacement),
``mstd`` std of Gaussian noise on the magnitude, drawn anew for every op application (``mstd`` > 100:
uniform in [0, m]), ``mmax`` the upper clip of the noisy magnitude (default 10), ``inc1`` the
"increasing" op set (every op stronger with larger m), ``p`` probability of applying each drawn op
(default 0.5).

Level -> argument, as in timm: rotate +-30 deg, shear +-0.3, translate +-0.45 of the image size
(``*Rel`` ops), enhance factors 0.1..1.9 (``*Increasing``: 1 +- 0.9), posterize keeps int(0.4 m) bits
(``PosterizeIncreasing``: 4 - int(0.4 m); 0 bits = black), solarize threshold int(25.6 m) of 256
(``SolarizeIncreasing``: 256 - that), solarize-add int(11 m) below 128; signed arguments are negated
with probability 0.5.

Every op takes a uint8 or a float ([0, 1]) image and returns the same dtype. On uint8 the ops
reproduce PIL (what timm runs) pixel for pixel: ImageEnhance's truncating blend, PIL's integer
grayscale, the SMOOTH kernel that leaves the 1-pixel border alone, ImageOps' look-up tables, and
``Image.transform(AFFINE)`` sampling (pixel centres at +0.5, shears about the top-left corner,
rotation about the centre, hard fill outside the source, edge-clamped bilinear / a = -1 bicubic,
truncated to uint8). On float images the same maps run without the uint8 rounding.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F

MAX_LEVEL = 10.0
FILL = (128, 128, 128)  # timm's default fill (``_FILL``); timm's create_transform passes round(255 * mean)
INTERPOLATIONS = ("bilinear", "bicubic", "random")


# ----------------------------------------------------------------------------------------------- helpers
def _is_u8(img: torch.Tensor) -> bool:
    return img.dtype == torch.uint8


def _levels(img: torch.Tensor) -> torch.Tensor:
    """Integer grey levels 0..255 (int64) of a uint8 image or of a float image in [0, 1] (rounded)."""
    if _is_u8(img):
        return img.long()
    return (img * 255).round().clamp(0, 255).long()


def _from_levels(q: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return q.to(torch.uint8) if _is_u8(like) else q.to(like.dtype) / 255


def _lut(img: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Apply per-channel (C, 256) integer look-up tables (values are clipped to 0..255, as PIL does)."""
    q = _levels(img)
    lut = lut.clamp(0, 255)
    out = torch.gather(lut, 1, q.flatten(1)).view_as(q)
    return _from_levels(out, img)


def _fill_values(fill, c: int, img: torch.Tensor) -> torch.Tensor:
    fill = tuple(float(v) for v in (fill if isinstance(fill, (tuple, list)) else (fill,)))
    if len(fill) != c:
        fill = (sum(fill) / len(fill),) * c
    t = torch.tensor(fill, dtype=torch.float64).view(c, 1, 1)
    return t if _is_u8(img) else t / 255


# ------------------------------------------------------------------------------------ geometric ops
def _cubic(v1, v2, v3, v4, d):
    """PIL's Geometry.c bicubic (Keys cubic with a = -1)."""
    p1 = v2
    p2 = -v1 + v3
    p3 = 2 * (v1 - v2) + v3 - v4
    p4 = -v1 + v2 - v3 + v4
    return p1 + d * (p2 + d * (p3 + d * p4))


def affine(img: torch.Tensor, data, fill=FILL, interpolation: str = "bilinear") -> torch.Tensor:
    """PIL ``Image.transform(size, AFFINE, data)``: output pixel (x, y) samples the input at
    ``(a x + b y + c, d x + e y + f)`` with pixel centres at +0.5 and the origin at the top-left corner.
    Points outside the source get ``fill`` (0..255 per channel, PIL's ``fillcolor``)."""
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation must be bilinear or bicubic, got {interpolation!r}")
    a, b, c0, d, e, f = (float(v) for v in data)
    c, h, w = img.shape
    work = torch.float64 if _is_u8(img) or img.dtype == torch.float64 else torch.float32  # float64: PIL's doubles
    src = img.to(work)
    ys = torch.arange(h, dtype=torch.float64).view(h, 1) + 0.5
    xs = torch.arange(w, dtype=torch.float64).view(1, w) + 0.5
    xin = a * xs + b * ys + c0
    yin = d * xs + e * ys + f
    inside = (xin >= 0) & (xin < w) & (yin >= 0) & (yin < h)
    xin, yin = xin - 0.5, yin - 0.5
    x, y = torch.floor(xin), torch.floor(yin)
    dx, dy = (xin - x).to(work), (yin - y).to(work)
    x, y = x.long(), y.long()
    flat = src.reshape(c, h * w)
    taps = (0, 1) if interpolation == "bilinear" else (-1, 0, 1, 2)
    # An axis the map leaves alone (x_in = x or y_in = y exactly: shears and translations) samples at whole
    # pixels, so its weights are exactly (1, 0, ...): only the centre tap is gathered, same values, fewer ops.
    x_taps = (0,) if (a, b, c0) == (1.0, 0.0, 0.0) else taps
    y_taps = (0,) if (d, e, f) == (0.0, 1.0, 0.0) else taps
    cols = {i: (x + i).clamp_(0, w - 1) for i in x_taps}  # edge pixels repeat (PIL's XCLIP / YCLIP)
    rows_at = {j: (y + j).clamp_(0, h - 1) * w for j in y_taps}

    def at(j, i):
        return flat.index_select(1, (rows_at[j] + cols[i]).flatten()).view(c, h, w)

    def along_x(j):
        if len(x_taps) == 1:
            return at(j, 0)
        if interpolation == "bilinear":
            left = at(j, 0)
            return left + (at(j, 1) - left) * dx
        return _cubic(*(at(j, i) for i in taps), dx)

    rows = [along_x(j) for j in y_taps]
    if len(y_taps) == 1:
        out = rows[0]
    elif interpolation == "bilinear":
        out = rows[0] + (rows[1] - rows[0]) * dy
    else:
        out = _cubic(*rows, dy)
    out = torch.where(inside, out, _fill_values(fill, c, img).to(work).expand(c, h, w))
    if _is_u8(img):
        return out.clamp(0, 255).trunc().to(torch.uint8)
    return out.clamp(0, 1).to(img.dtype) if interpolation == "bicubic" else out.to(img.dtype)


def rotate(img, degrees, fill=FILL, interpolation="bilinear"):
    """PIL ``Image.rotate(degrees)``: counter-clockwise about the centre, same size."""
    angle = float(degrees) % 360.0
    h, w = img.shape[-2:]
    if angle == 0:
        return img.clone()
    if angle == 180:
        return img.flip(-2, -1)
    if angle in (90, 270) and w == h:
        return img.rot90(1 if angle == 90 else -1, (-2, -1))
    cx, cy = w / 2, h / 2
    rad = -math.radians(angle)
    a, b = round(math.cos(rad), 15), round(math.sin(rad), 15)
    d, e = round(-math.sin(rad), 15), round(math.cos(rad), 15)
    c0 = a * -cx + b * -cy + cx
    f = d * -cx + e * -cy + cy
    return affine(img, (a, b, c0, d, e, f), fill, interpolation)


def shear_x(img, factor, fill=FILL, interpolation="bilinear"):
    """x_in = x + factor * y about the top-left corner (PIL affine), as timm's ShearX."""
    return affine(img, (1, factor, 0, 0, 1, 0), fill, interpolation)


def shear_y(img, factor, fill=FILL, interpolation="bilinear"):
    return affine(img, (1, 0, 0, factor, 1, 0), fill, interpolation)


def translate_x(img, frac, fill=FILL, interpolation="bilinear"):
    """Shift by ``frac`` of the width (timm's TranslateXRel: content moves left for frac > 0)."""
    return affine(img, (1, 0, frac * img.shape[-1], 0, 1, 0), fill, interpolation)


def translate_y(img, frac, fill=FILL, interpolation="bilinear"):
    return affine(img, (1, 0, 0, 0, 1, frac * img.shape[-2]), fill, interpolation)


# --------------------------------------------------------------------------------------- colour ops
def posterize(img, bits, **_):
    """Keep the ``bits`` most significant bits (0 bits: black); 8 or more: unchanged."""
    bits = int(bits)
    if bits >= 8:
        return img
    mask = (~((1 << (8 - max(bits, 0))) - 1)) & 255
    return _from_levels(_levels(img) & mask, img)


def solarize(img, threshold, **_):
    """Invert levels >= ``threshold`` (0..256; PIL ImageOps.solarize)."""
    if _is_u8(img):
        return torch.where(img.long() >= threshold, 255 - img, img)
    return torch.where(img * 255 >= threshold - 0.5, 1 - img, img)


def solarize_add(img, add, threshold=128, **_):
    """Add ``add`` levels (clipped at 255) to levels below ``threshold`` (timm's solarize_add)."""
    if _is_u8(img):
        return torch.where(img.long() < threshold, (img.long() + int(add)).clamp(max=255), img.long()).to(img.dtype)
    return torch.where(img * 255 < threshold - 0.5, (img + add / 255).clamp(max=1), img)


def auto_contrast(img, _=None, **__):
    """PIL ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 255]."""
    q = _levels(img)
    lo = q.flatten(1).amin(1)
    hi = q.flatten(1).amax(1)
    if _is_u8(img):
        scale = 255.0 / (hi - lo).clamp_min(1).double()
        ix = torch.arange(256, dtype=torch.float64)
        lut = (ix.view(1, 256) * scale.view(-1, 1) - lo.double().view(-1, 1) * scale.view(-1, 1)).trunc().long()
        lut = torch.where((hi > lo).view(-1, 1), lut, torch.arange(256).expand_as(lut))
        return _lut(img, lut)
    lo_f = img.amin(dim=(-2, -1), keepdim=True)
    hi_f = img.amax(dim=(-2, -1), keepdim=True)
    flat = (hi <= lo).view(-1, 1, 1)
    return torch.where(flat, img, ((img - lo_f) / (hi_f - lo_f).clamp_min(1e-12)).clamp(0, 1))


def equalize(img, _=None, **__):
    """Per-channel histogram equalisation on 256 levels (PIL ImageOps.equalize)."""
    q = _levels(img)
    luts = []
    for ch in range(img.shape[0]):
        hist = torch.bincount(q[ch].flatten(), minlength=256)
        nonzero = hist[hist > 0]
        step = int((hist.sum() - nonzero[-1]) // 255) if len(nonzero) > 1 else 0
        if step == 0:
            luts.append(torch.arange(256))
        else:
            luts.append((torch.cumsum(hist, 0) - hist + step // 2) // step)
    out = _lut(img, torch.stack(luts))
    if not _is_u8(img):  # a channel left alone keeps its unrounded values
        ident = torch.tensor([torch.equal(lut, torch.arange(256)) for lut in luts]).view(-1, 1, 1)
        out = torch.where(ident, img, out)
    return out


def invert(img, _=None, **__):
    return 255 - img if _is_u8(img) else 1 - img


def _gray_levels(img: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L on integer levels: (19595 R + 38470 G + 7471 B + 2**15) >> 16."""
    q = img.long()
    if q.shape[0] != 3:
        return q[:1] if q.shape[0] == 1 else q.float().mean(0, keepdim=True).round().long()
    return (q[0] * 19595 + q[1] * 38470 + q[2] * 7471 + 0x8000).unsqueeze(0) >> 16


def _gray(img: torch.Tensor) -> torch.Tensor:
    if img.shape[0] != 3:
        return img.mean(0, keepdim=True)
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]).unsqueeze(0)


def _blend(img: torch.Tensor, degenerate: torch.Tensor, factor: float) -> torch.Tensor:
    """PIL Image.blend(degenerate, img, factor): degenerate + factor (img - degenerate), float32,
    truncated and clipped to uint8 (uint8 images) or clipped to [0, 1] (float images)."""
    if _is_u8(img):
        a = degenerate.to(torch.float32).expand_as(img)
        out = a + torch.tensor(factor, dtype=torch.float32) * (img.to(torch.float32) - a)
        return out.clamp(0, 255).trunc().to(torch.uint8)
    return (degenerate + factor * (img - degenerate)).clamp(0.0, 1.0)


def color(img, factor, **_):
    if img.shape[0] == 1:
        return img.clone()
    deg = _gray_levels(img) if _is_u8(img) else _gray(img)
    return _blend(img, deg.expand_as(img), factor)


def contrast(img, factor, **_):
    if _is_u8(img):
        mean = int(float(_gray_levels(img).double().mean()) + 0.5)
        return _blend(img, torch.full_like(img, mean, dtype=torch.long), factor)
    return _blend(img, _gray(img).mean().expand_as(img), factor)


def brightness(img, factor, **_):
    return _blend(img, torch.zeros_like(img), factor)


def sharpness(img, factor, **_):
    """PIL ImageEnhance.Sharpness: blend with the SMOOTH 3x3 filter (1 1 1 / 1 5 1 / 1 1 1, / 13); the
    filtered image keeps the original 1-pixel border."""
    c, h, w = img.shape
    if h < 3 or w < 3:
        return img.clone()
    kernel = torch.tensor([[1, 1, 1], [1, 5, 1], [1, 1, 1]], dtype=torch.float64).expand(c, 1, 3, 3)
    smooth = img.to(torch.float64).clone()
    inner = F.conv2d(img.to(torch.float64).unsqueeze(0), kernel, groups=c)[0]
    if _is_u8(img):
        inner = torch.div(2 * inner.round().long() + 13, 26, rounding_mode="floor").double()  # round(S / 13)
    else:
        inner = inner / 13
    smooth[:, 1:-1, 1:-1] = inner
    return _blend(img, smooth if _is_u8(img) else smooth.to(img.dtype), factor)


# ------------------------------------------------------------------------------- level -> argument
def _signed(v, generator):
    """Negate with probability 0.5."""
    return -v if torch.rand((), generator=generator) < 0.5 else v


def _enhance(level, _g):
    return level / MAX_LEVEL * 1.8 + 0.1


def _enhance_increasing(level, gen):
    return max(0.1, 1.0 + _signed(level / MAX_LEVEL * 0.9, gen))


def _posterize_bits(level, _g):
    return int(level / MAX_LEVEL * 4)


def _solarize_threshold(level, _g):
    return min(256, int(level / MAX_LEVEL * 256))


# name -> (op, level (magnitude after noise and clipping) -> argument)
OPS = {
    "AutoContrast": (auto_contrast, lambda m, g: None),
    "Equalize": (equalize, lambda m, g: None),
    "Invert": (invert, lambda m, g: None),
    "Rotate": (rotate, lambda m, g: _signed(m / MAX_LEVEL * 30.0, g)),
    "Posterize": (posterize, _posterize_bits),
    "PosterizeIncreasing": (posterize, lambda m, g: 4 - _posterize_bits(m, g)),
    "PosterizeOriginal": (posterize, lambda m, g: _posterize_bits(m, g) + 4),
    "Solarize": (solarize, _solarize_threshold),
    "SolarizeIncreasing": (solarize, lambda m, g: 256 - _solarize_threshold(m, g)),
    "SolarizeAdd": (solarize_add, lambda m, g: min(128, int(m / MAX_LEVEL * 110))),
    "Color": (color, _enhance),
    "ColorIncreasing": (color, _enhance_increasing),
    "Contrast": (contrast, _enhance),
    "ContrastIncreasing": (contrast, _enhance_increasing),
    "Brightness": (brightness, _enhance),
    "BrightnessIncreasing": (brightness, _enhance_increasing),
    "Sharpness": (sharpness, _enhance),
    "SharpnessIncreasing": (sharpness, _enhance_increasing),
    "ShearX": (shear_x, lambda m, g: _signed(m / MAX_LEVEL * 0.3, g)),
    "ShearY": (shear_y, lambda m, g: _signed(m / MAX_LEVEL * 0.3, g)),
    "TranslateXRel": (translate_x, lambda m, g: _signed(m / MAX_LEVEL * 0.45, g)),
    "TranslateYRel": (translate_y, lambda m, g: _signed(m / MAX_LEVEL * 0.45, g)),
}
GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}

# timm's _RAND_TRANSFORMS / _RAND_INCREASING_TRANSFORMS, in timm's order
RAND_OPS = ["AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
            "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]
RAND_OPS_INCREASING = ["AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                       "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                       "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"]


class RandAugment:
    """Apply ``num_ops`` ops drawn uniformly (with replacement), each with probability ``prob``.

    ``fill``: 0..255 per channel for pixels from outside the image (timm: ``img_mean``, default 128);
    ``interpolation``: bilinear, bicubic or random (timm's default: a random one of the two per op).
    """

    def __init__(self, magnitude: float = 10, num_ops: int = 2, magnitude_std: float = 0.0, increasing: bool = False,
                 prob: float = 0.5, magnitude_max: float | None = None, fill=FILL, interpolation: str = "random"):
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
        self.magnitude, self.num_ops, self.magnitude_std, self.prob = magnitude, num_ops, magnitude_std, prob
        self.magnitude_max, self.fill, self.interpolation = magnitude_max, fill, interpolation
        self.increasing = increasing
        self.ops = RAND_OPS_INCREASING if increasing else RAND_OPS

    @classmethod
    def from_string(cls, spec: str, **kwargs) -> "RandAugment":
        """Parse ``rand-m9-n2-mstd0.5-mmax10-inc1-p0.5`` (every part after ``rand`` optional, any order);
        ``kwargs`` (fill, interpolation) are timm's hparams."""
        parts = spec.split("-")
        if parts[0] != "rand":
            raise ValueError(f"auto-augment string must start with 'rand' (e.g. 'rand-m9-mstd0.5-inc1'), got {spec!r}")
        kw = {}
        keys = {"mstd": ("magnitude_std", float), "mmax": ("magnitude_max", int), "m": ("magnitude", float),
                "n": ("num_ops", int), "inc": ("increasing", lambda v: bool(int(v))), "p": ("prob", float)}
        for part in parts[1:]:
            match = re.fullmatch(r"([a-z]+)(\d.*)", part)
            if match is None or match.group(1) not in keys:
                raise ValueError(f"unknown auto-augment part {part!r} in {spec!r}; known: m, n, mstd, mmax, inc, p")
            name, conv = keys[match.group(1)]
            try:
                kw[name] = conv(match.group(2))
            except ValueError as e:
                raise ValueError(f"bad value in auto-augment part {part!r} of {spec!r}") from e
        if kw.get("magnitude_std", 0.0) > 100:
            kw["magnitude_std"] = float("inf")  # timm: uniform magnitude in [0, m]
        return cls(**kw, **kwargs)

    def sample_magnitude(self, generator=None) -> float:
        m = self.magnitude
        if self.magnitude_std == float("inf"):
            m = m * float(torch.rand((), generator=generator))
        elif self.magnitude_std > 0:
            m = m + self.magnitude_std * float(torch.randn((), generator=generator))
        return min(self.magnitude_max or MAX_LEVEL, max(0.0, m))

    def __call__(self, img, generator=None):
        idx = torch.randint(len(self.ops), (self.num_ops,), generator=generator).tolist()
        for i in idx:
            if self.prob < 1.0 and torch.rand((), generator=generator) >= self.prob:
                continue
            name = self.ops[i]
            op, arg = OPS[name]
            value = arg(self.sample_magnitude(generator), generator)
            if name in GEOMETRIC:
                interp = self.interpolation
                if interp == "random":
                    interp = "bicubic" if torch.rand((), generator=generator) < 0.5 else "bilinear"
                img = op(img, value, fill=self.fill, interpolation=interp)
            else:
                img = op(img, value)
        return img

    def __repr__(self) -> str:
        return (f"RandAugment(m={self.magnitude}, n={self.num_ops}, mstd={self.magnitude_std}, "
                f"mmax={self.magnitude_max}, p={self.prob}, inc={int(self.increasing)}, fill={self.fill}, "
                f"{self.interpolation}, ops={len(self.ops)})")

"""Random-resized crops decoded in JPEG draft mode (at 1/2, 1/4 or 1/8 scale) when the crop allows it.

libjpeg can run its inverse DCT at reduced scale (Pillow: ``Image.draft(mode, size)``), which decodes a
large JPEG in a fraction of the full time. A random-resized crop that is later shrunk to the output
size does not need the full resolution when the crop is at least twice (four, eight times) the output
in both sides. The order of work keeps the augmentation the one of the full-size path:

1. the crop box is drawn in full-resolution coordinates from the header size, before any decoding,
   with the very draws :meth:`~vitlab.data.transforms.RandomResizedCrop.box` makes on the decoded image;
2. the reduction is the largest ``s`` in (8, 4, 2) with ``crop_h >= s * out_h`` and ``crop_w >= s * out_w``
   (:func:`draft_reduction`): the crop region of the reduced image still has at least the output size
   in both sides, so the resize only ever shrinks, never upsamples;
3. the box is mapped into the reduced image by its actual size ratio (libjpeg rounds sizes up), as a
   sub-pixel box, and Pillow resizes that region to the output (antialiased when shrinking).

Files that are not JPEG, or whose mode is not the requested one, are decoded in full (the same box).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .transforms import PIL_RESAMPLE, Compose, RandomResizedCrop, ToChannels, ToTensor, ToUint8, pil_to_uint8

REDUCTIONS = (8, 4, 2)   # the scales libjpeg's scaled inverse DCT offers through Pillow's draft()
DRAFT_MODES = ("RGB", "L")


@dataclass(frozen=True)
class CropResult:
    """A resized crop: the uint8 (C, h, w) image, its box ``(top, left, height, width)`` in the
    full-resolution image, and the JPEG reduction it was decoded at (1: full size)."""
    image: torch.Tensor
    box: tuple[int, int, int, int]
    reduction: int


def draft_reduction(crop_hw: tuple[int, int], out_hw: tuple[int, int], max_reduction: int = 8) -> int:
    """Largest ``s`` in (8, 4, 2) (at most ``max_reduction``) with the crop at least ``s`` times the output in
    both sides; 1 when none is."""
    ch, cw = crop_hw
    oh, ow = out_hw
    for s in REDUCTIONS:
        if s <= max_reduction and ch >= s * oh and cw >= s * ow:
            return s
    return 1


def can_draft(im, mode: str) -> bool:
    """Whether an opened (not yet decoded) Pillow image can be decoded in draft mode as ``mode``."""
    return im.format == "JPEG" and mode in DRAFT_MODES and im.mode == mode


def draft_plan(transform) -> tuple[RandomResizedCrop, Compose] | None:
    """``(crop, the other steps)`` when ``transform`` is a :class:`Compose` whose first step after the
    conversions (ToUint8 / ToChannels) is a :class:`RandomResizedCrop` with ``draft=True``; else None."""
    steps = getattr(transform, "transforms", None) if isinstance(transform, Compose) else None
    if not steps:
        return None
    i = 0
    while i < len(steps) and isinstance(steps[i], (ToUint8, ToChannels)):
        i += 1
    if i == len(steps) or not isinstance(steps[i], RandomResizedCrop) or not steps[i].draft:
        return None
    if any(isinstance(s, ToTensor) and not isinstance(s, ToUint8) for s in steps[:i]):
        return None  # a float pipeline
    return steps[i], Compose(steps[:i] + steps[i + 1:])


def load_resized_crop(path: str, crop: RandomResizedCrop, generator=None, *, mode: str = "RGB",
                      draft: bool = True, max_reduction: int = 8) -> CropResult:
    """``crop`` of the image at ``path``: the box drawn from the header size with ``generator``, the JPEG
    decoded at the largest reduction the box allows (``draft=False``: always full size), resized by Pillow."""
    from PIL import Image

    from .folder import decoded
    with Image.open(path) as im:
        w, h = im.size
        top, left, ch, cw = crop.box(h, w, generator)
        s = draft_reduction((ch, cw), crop.size, max_reduction) if draft and can_draft(im, mode) else 1
        if s > 1:
            im.draft(mode, (w // s, h // s))   # Pillow picks the largest scale keeping at least this size
            im.load()
            pic = im
        else:
            pic = decoded(im, mode)
        rw, rh = pic.size
        sx, sy = rw / w, rh / h
        box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
        out = pic.resize((crop.size[1], crop.size[0]), PIL_RESAMPLE[crop.interpolation], box=box)
        return CropResult(pil_to_uint8(out), (top, left, ch, cw), int(round(w / rw)))

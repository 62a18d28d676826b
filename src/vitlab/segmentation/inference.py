"""Test-time inference: whole image, sliding window, multi-scale + flip (the mmseg conventions).

``score_fn(img) -> (B, K, h, w)`` is any function giving per-class scores at its input's size
(``Segmentor.predict_scores``). Scores are averaged over overlapping windows, over scales (after
resizing back to the input size) and over the horizontal flip; the prediction is the argmax.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def window_starts(size: int, crop: int, stride: int) -> list[int]:
    """Window origins along one side: every ``stride``, the last one flush with the far edge."""
    if crop >= size:
        return [0]
    n = (size - crop + stride - 1) // stride + 1
    return sorted({min(i * stride, size - crop) for i in range(n)})


@torch.no_grad()
def slide_inference(score_fn: ScoreFn, img: torch.Tensor, crop_size: int | Sequence[int],
                    stride: int | Sequence[int], max_batch: int = 8) -> torch.Tensor:
    """Average the scores of overlapping ``crop_size`` windows placed every ``stride`` pixels.

    Windows of one image are batched (up to ``max_batch`` per call). Images smaller than the crop
    are run whole.
    """
    ch, cw = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
    sh, sw = (stride, stride) if isinstance(stride, int) else tuple(stride)
    if sh <= 0 or sw <= 0 or sh > ch or sw > cw:
        raise ValueError(f"stride {(sh, sw)} must be positive and at most the crop size {(ch, cw)}")
    B, _, H, W = img.shape
    boxes = [(y, x, min(y + ch, H), min(x + cw, W)) for y in window_starts(H, ch, sh) for x in window_starts(W, cw, sw)]
    scores, count = None, img.new_zeros(1, 1, H, W)
    for i in range(0, len(boxes), max(1, max_batch // B)):
        chunk = boxes[i:i + max(1, max_batch // B)]
        crops = torch.cat([img[:, :, y1:y2, x1:x2] for y1, x1, y2, x2 in chunk])
        out = score_fn(crops)
        if scores is None:
            scores = img.new_zeros(B, out.shape[1], H, W)
        for j, (y1, x1, y2, x2) in enumerate(chunk):
            scores[:, :, y1:y2, x1:x2] += out[j * B:(j + 1) * B]
            count[:, :, y1:y2, x1:x2] += 1
    return scores / count


@torch.no_grad()
def predict(score_fn: ScoreFn, img: torch.Tensor, mode: str = "whole", crop_size=None, stride=None,
            scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """Per-class scores (B, K, H, W) at the input size with optional multi-scale and flip averaging."""
    if mode not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', got {mode!r}")
    if mode == "slide" and (crop_size is None or stride is None):
        raise ValueError("sliding-window inference needs crop_size and stride")
    H, W = img.shape[-2:]
    total = None
    for scale in scales:
        x = img if scale == 1.0 else F.interpolate(img, scale_factor=scale, mode="bilinear", align_corners=False)
        for flipped in ((False, True) if flip else (False,)):
            xi = x.flip(-1) if flipped else x
            s = slide_inference(score_fn, xi, crop_size, stride) if mode == "slide" else score_fn(xi)
            s = s.flip(-1) if flipped else s
            if s.shape[-2:] != (H, W):
                s = F.interpolate(s, size=(H, W), mode="bilinear", align_corners=False)
            total = s if total is None else total + s
    return total / (len(scales) * (2 if flip else 1))


def predict_segmentor(model, img: torch.Tensor, mode: str | None = None, crop_size=None, stride=None,
                      scales: Sequence[float] = (1.0,), flip: bool = False) -> torch.Tensor:
    """:func:`predict` with a segmentor's ``test_cfg`` as defaults (mode, crop size, stride)."""
    cfg = getattr(model, "test_cfg", {}) or {}
    mode = mode or cfg.get("mode", "whole")
    crop_size = crop_size or cfg.get("crop_size")
    stride = stride or cfg.get("stride")
    was_training = model.training
    model.eval()
    try:
        return predict(model.predict_scores, img, mode, crop_size, stride, scales, flip)
    finally:
        model.train(was_training)

"""Heatmaps -> keypoints in the original image, as mmpose 0.x's ``keypoints_from_heatmaps``.

* The joint is the argmax of its heatmap (score = the maximum; position -1 when the maximum is
  not positive).
* ``post_process="default"``: the position moves a quarter pixel towards the higher neighbour in
  x and in y (``+0.25 * sign(h[x+1] - h[x-1])``), for joints with ``1 < x < W - 1`` and
  ``1 < y < H - 1`` (mmpose's bounds, kept as they are). ``None`` keeps the integer argmax.
* The heatmap position maps back through the inverse crop affine (:func:`vitlab.pose.targets.affine_matrix`
  with ``output_size`` = the heatmap size, rotation 0): ``p = (x - W / 2) * scale[0] * 200 / W + cx``.

:func:`flip_back` undoes a horizontal test-time flip (mmpose's ``flip_back``: mirror the maps,
swap left/right channels) and, with ``shift=True`` (``shift_heatmap``), moves the result one pixel
right, because mirroring a map whose pixel grid is not symmetric about the crop centre is off by one.
"""
from __future__ import annotations

import torch

from vitlab.pose.targets import COCO_FLIP_PAIRS, PIXEL_STD


def flip_back(heatmaps: torch.Tensor, flip_pairs=COCO_FLIP_PAIRS, shift: bool = True) -> torch.Tensor:
    """Heatmaps of a horizontally flipped input (N, K, H, W) -> heatmaps for the unflipped input."""
    order = list(range(heatmaps.shape[1]))
    for left, right in flip_pairs:
        order[left], order[right] = right, left
    out = heatmaps[:, order].flip(-1)
    if shift:
        out = torch.cat([out[..., :1], out[..., :-1]], dim=-1)  # out[..., 1:] = out[..., :-1]
    return out


def heatmap_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) -> (coords (N, K, 2) float x, y in heatmap pixels, maxvals (N, K, 1))."""
    N, K, H, W = heatmaps.shape
    maxvals, idx = heatmaps.reshape(N, K, -1).max(dim=-1)
    coords = torch.stack([idx % W, idx // W], dim=-1).to(heatmaps.dtype if heatmaps.is_floating_point()
                                                         else torch.float32)
    coords = torch.where((maxvals > 0)[..., None], coords, torch.full_like(coords, -1.0))
    return coords, maxvals[..., None]


def quarter_offset(heatmaps: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """mmpose's default refinement: +-0.25 px towards the higher neighbour (interior joints only)."""
    N, K, H, W = heatmaps.shape
    px, py = coords[..., 0].long(), coords[..., 1].long()
    ok = (px > 1) & (px < W - 1) & (py > 1) & (py < H - 1)
    pxc, pyc = px.clamp(1, W - 2), py.clamp(1, H - 2)
    flat = heatmaps.reshape(N, K, -1)
    at = lambda y, x: flat.gather(-1, (y * W + x)[..., None])[..., 0]  # noqa: E731
    dx = at(pyc, pxc + 1) - at(pyc, pxc - 1)
    dy = at(pyc + 1, pxc) - at(pyc - 1, pxc)
    shift = torch.stack([torch.sign(dx), torch.sign(dy)], dim=-1) * 0.25
    return coords + torch.where(ok[..., None], shift, torch.zeros_like(shift)).to(coords.dtype)


def heatmap_to_image(coords: torch.Tensor, center: torch.Tensor, scale: torch.Tensor, heatmap_size) -> torch.Tensor:
    """Heatmap positions (N, K, 2) -> image pixels, given each crop's center (N, 2) and scale (N, 2)."""
    W, H = float(heatmap_size[0]), float(heatmap_size[1])
    center = torch.as_tensor(center, dtype=torch.float64, device=coords.device).reshape(-1, 1, 2)
    scale = torch.as_tensor(scale, dtype=torch.float64, device=coords.device).reshape(-1, 1, 2)
    k = scale[..., :1] * PIXEL_STD / W  # isotropic, from the width (mmpose's get_affine_transform)
    half = torch.tensor([W / 2, H / 2], dtype=torch.float64, device=coords.device)
    return ((coords.double() - half) * k + center).to(coords.dtype)


def keypoints_from_heatmaps(heatmaps: torch.Tensor, center, scale, post_process: str | None = "default"):
    """(N, K, H, W) heatmaps + crop center/scale -> (keypoints (N, K, 2) in image pixels, scores (N, K, 1))."""
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, H, W), got {tuple(heatmaps.shape)}")
    if post_process not in (None, "default"):
        raise ValueError(f"post_process must be 'default' or None, got {post_process!r}")
    heatmaps = heatmaps.detach().float()
    coords, maxvals = heatmap_argmax(heatmaps)
    if post_process == "default":
        coords = quarter_offset(heatmaps, coords)
    H, W = heatmaps.shape[-2:]
    return heatmap_to_image(coords, center, scale, (W, H)), maxvals

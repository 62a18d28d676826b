"""Top-down crop geometry and Gaussian heatmap targets, with mmpose 0.x's conventions.

* A person box becomes a ``center`` (x, y) and a ``scale`` (w, h) in units of 200 px
  (``TopDownCocoDataset._xywh2cs``): the box is widened or heightened to the input aspect ratio
  (192 / 256) and padded by 1.25.
* :func:`affine_matrix` is mmpose's ``get_affine_transform`` (no UDP): the image point ``center``
  goes to the middle of the output, ``scale[0] * 200`` image pixels span the output width (an
  isotropic scale; ``scale[1]`` only matters through the aspect ratio), and the crop is rotated
  by ``rotation`` degrees. Integer coordinates are pixel centres (OpenCV's ``warpAffine``), and the
  input->heatmap map is a plain division by the stride (``x / 4``), so centre goes to centre.
* :func:`gaussian_targets` is ``TopDownGenerateTarget`` with the MSRA encoding: an unnormalised
  Gaussian (peak 1, standard deviation ``sigma`` heatmap pixels, cut at 3 sigma) centred on the
  joint's position rounded to the nearest heatmap pixel; the weight is 1 for a visible joint
  whose 3-sigma window overlaps the heatmap, 0 otherwise (mmpose's bounds test, kept as it is: a
  window whose exclusive end is exactly column or row 0 counts as overlapping).
"""
from __future__ import annotations

import math

import numpy as np
import torch

PIXEL_STD = 200.0  # mmpose's unit for ``scale``

COCO_KEYPOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                       "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                       "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO_FLIP_PAIRS = ((1, 2), (3, 4), (5, 6), (7, 8), (9, 10), (11, 12), (13, 14), (15, 16))
COCO_UPPER_BODY_IDS = tuple(range(11))  # nose .. right wrist; the rest is the lower body


def box_to_center_scale(box_xywh, aspect_ratio: float = 192 / 256, padding: float = 1.25):
    """(x, y, w, h) box -> (center (2,), scale (2,)) float64 arrays, scale in units of 200 px."""
    x, y, w, h = (float(v) for v in box_xywh[:4])
    center = np.array([x + w * 0.5, y + h * 0.5])
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h]) / PIXEL_STD * padding


def affine_matrix(center, scale, rotation: float, output_size, inv: bool = False) -> np.ndarray:
    """(2, 3) float64 matrix image -> output pixels (``inv=True``: output -> image).

    ``output_size`` is (width, height). With ``k = width / (scale[0] * 200)`` and ``R(a)`` the
    rotation by ``a`` in image coordinates (x right, y down): ``out = k R(-rotation) (p - center) +
    (width / 2, height / 2)``, the closed form of mmpose's three-point ``get_affine_transform``.
    """
    cx, cy = float(center[0]), float(center[1])
    w, h = float(output_size[0]), float(output_size[1])
    k = w / (float(scale[0]) * PIXEL_STD)
    a = math.radians(float(rotation))
    cos, sin = math.cos(a), math.sin(a)
    if inv:  # p = R(rot) (out - half) / k + center
        lin = np.array([[cos, -sin], [sin, cos]]) / k
        return np.concatenate([lin, (np.array([cx, cy]) - lin @ np.array([w / 2, h / 2]))[:, None]], axis=1)
    lin = k * np.array([[cos, sin], [-sin, cos]])
    return np.concatenate([lin, (np.array([w / 2, h / 2]) - lin @ np.array([cx, cy]))[:, None]], axis=1)


def apply_affine(points, matrix) -> np.ndarray:
    """(K, 2) points through a (2, 3) affine matrix."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return pts @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def fliplr_joints(joints, visible, img_width: int, flip_pairs=COCO_FLIP_PAIRS):
    """mmpose's ``fliplr_joints``: swap left/right joints, x -> width - 1 - x, invisible joints zeroed."""
    joints = np.array(joints, dtype=np.float64)
    visible = np.array(visible, dtype=np.float64)
    for left, right in flip_pairs:
        joints[[left, right]] = joints[[right, left]]
        visible[[left, right]] = visible[[right, left]]
    joints[:, 0] = img_width - 1 - joints[:, 0]
    return joints * visible[:, None], visible


def gaussian_targets(joints, visible, input_size=(192, 256), heatmap_size=(48, 64), sigma: float = 2.0):
    """MSRA Gaussian heatmaps: (K, 2) joints in input pixels, (K,) visibility -> (target (K, H, W), weight (K, 1)).

    Both are float32 tensors; sizes are (width, height).
    """
    joints = np.asarray(joints, dtype=np.float64).reshape(-1, 2)
    visible = np.asarray(visible, dtype=np.float64).reshape(-1)
    W, H = int(heatmap_size[0]), int(heatmap_size[1])
    stride = np.array([input_size[0] / W, input_size[1] / H])
    tmp = sigma * 3
    size = 2 * tmp + 1
    half = size // 2
    mu = np.trunc(joints / stride + 0.5)  # python int(): truncation, as mmpose
    ul = np.trunc(mu - tmp)
    br = np.trunc(mu + tmp + 1)
    inside = ~((ul[:, 0] >= W) | (ul[:, 1] >= H) | (br[:, 0] < 0) | (br[:, 1] < 0))
    weight = np.where(inside, np.minimum(visible, 1.0), 0.0)
    xs, ys = np.arange(W), np.arange(H)
    target = np.zeros((len(joints), H, W), dtype=np.float32)
    for j in np.flatnonzero(weight > 0.5):
        gx = xs - ul[j, 0] - half  # offset from the window centre, as the window is indexed
        gy = ys - ul[j, 1] - half
        mx = (xs >= ul[j, 0]) & (xs < br[j, 0])
        my = (ys >= ul[j, 1]) & (ys < br[j, 1])
        g = np.exp(-(gy[:, None] ** 2 + gx[None, :] ** 2) / (2 * sigma ** 2))
        target[j] = np.where(my[:, None] & mx[None, :], g, 0.0)
    return torch.from_numpy(target), torch.from_numpy(weight.astype(np.float32)[:, None])


def render_gaussians(points, heatmap_size=(48, 64), sigma: float = 2.0) -> torch.Tensor:
    """Exact (unquantised) Gaussians at sub-pixel heatmap positions (K, 2) -> (K, H, W): an ideal network output."""
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64)).reshape(-1, 2)
    W, H = int(heatmap_size[0]), int(heatmap_size[1])
    xs = torch.arange(W, dtype=torch.float64)
    ys = torch.arange(H, dtype=torch.float64)
    d2 = (ys[None, :, None] - pts[:, 1, None, None]) ** 2 + (xs[None, None, :] - pts[:, 0, None, None]) ** 2
    return torch.exp(-d2 / (2 * sigma ** 2)).float()

"""Top-down crop geometry and MSRA Gaussian targets against mmpose 0.x's definitions."""
import math

import numpy as np
import pytest
import torch

from vitlab.pose.data import warp_affine
from vitlab.pose.targets import (COCO_FLIP_PAIRS, affine_matrix, apply_affine, box_to_center_scale, fliplr_joints,
                                 gaussian_targets)


def _three_point_affine(center, scale, rot, output_size, inv=False):
    """mmpose's get_affine_transform, written out: three point pairs, solved as a linear system."""
    src_w = scale[0] * 200.0
    w, h = output_size
    a = math.radians(rot)
    cos, sin = math.cos(a), math.sin(a)
    rotate = lambda p: np.array([p[0] * cos - p[1] * sin, p[0] * sin + p[1] * cos])  # noqa: E731
    third = lambda p, q: q + np.array([-(p - q)[1], (p - q)[0]])  # noqa: E731
    src = [np.asarray(center, float), np.asarray(center, float) + rotate([0.0, -src_w / 2])]
    dst = [np.array([w / 2, h / 2]), np.array([w / 2, h / 2 - w / 2])]
    src.append(third(*src))
    dst.append(third(*dst))
    if inv:
        src, dst = dst, src
    A = np.array([[*p, 1.0] for p in src])
    return np.linalg.solve(A, np.array(dst)).T  # (2, 3)


def test_box_to_center_scale_pads_to_the_aspect_ratio():
    c, s = box_to_center_scale([10, 20, 60, 40], aspect_ratio=192 / 256)  # wide box: height grows
    assert c.tolist() == [40.0, 40.0]
    assert s.tolist() == pytest.approx([60 / 200 * 1.25, 80 / 200 * 1.25])
    c, s = box_to_center_scale([0, 0, 30, 200])  # tall box: width grows
    assert s.tolist() == pytest.approx([150 / 200 * 1.25, 200 / 200 * 1.25])


@pytest.mark.parametrize("rot", [0.0, 30.0, -65.0])
def test_affine_matrix_equals_the_three_point_construction(rot):
    center, scale = np.array([123.4, 88.8]), np.array([0.9, 1.2])
    for inv in (False, True):
        ours = affine_matrix(center, scale, rot, (192, 256), inv=inv)
        assert np.allclose(ours, _three_point_affine(center, scale, rot, (192, 256), inv=inv), atol=1e-9)
    # the box centre lands on the crop centre; the inverse undoes the forward map
    assert apply_affine([center], affine_matrix(center, scale, rot, (192, 256)))[0] == pytest.approx([96, 128])
    pts = np.array([[10.0, 20.0], [300.0, 5.0]])
    back = apply_affine(apply_affine(pts, affine_matrix(center, scale, rot, (192, 256))),
                        affine_matrix(center, scale, rot, (192, 256), inv=True))
    assert np.allclose(back, pts)


def test_warp_affine_samples_like_warp_affine_at_pixel_centres():
    img = torch.zeros(3, 60, 80)
    img[:, 30, 50] = 1.0  # one lit pixel
    center, scale = np.array([40.0, 30.0]), np.array([80 / 200, 120 / 200])
    M = affine_matrix(center, scale, 0.0, (80, 120))  # a 1:1 crop (scale 1): integer shifts only
    out = warp_affine(img, M, (80, 120))
    y, x = divmod(int(out[0].argmax()), out.shape[-1])
    assert (x, y) == tuple(apply_affine([[50, 30]], M)[0].round().astype(int)) and out[0].max() == pytest.approx(1.0)
    # a rotated crop moves the pixel where the matrix says (within the bilinear spread)
    M = affine_matrix(center, scale, 90.0, (80, 120))
    out = warp_affine(img, M, (80, 120))
    y, x = divmod(int(out[0].argmax()), out.shape[-1])
    assert np.abs(np.array([x, y]) - apply_affine([[50, 30]], M)[0]).max() <= 1.0


def test_gaussian_peak_at_the_rounded_joint_and_msra_values():
    joints = np.array([[41.0, 62.0], [10.3, 250.0], [0.0, 0.0], [500.0, 100.0], [-26.0, 10.0], [-30.0, 10.0]])
    visible = np.array([1, 1, 0, 1, 1, 1])
    target, weight = gaussian_targets(joints, visible, (192, 256), (48, 64), sigma=2)
    assert target.shape == (6, 64, 48) and weight.shape == (6, 1) and target.dtype == torch.float32
    # joint 0: 41/4 = 10.25 -> column 10, 62/4 = 15.5 -> row 16 (int(x + 0.5))
    y, x = divmod(int(target[0].argmax()), 48)
    assert (x, y) == (10, 16) and float(target[0, 16, 10]) == 1.0
    assert float(target[0, 16, 12]) == pytest.approx(math.exp(-4 / 8))  # exp(-d^2 / (2 sigma^2))
    assert float(target[0, 16, 16]) == pytest.approx(math.exp(-36 / 8))  # 3 sigma = 6 px: still inside the window
    assert float(target[0, 16, 17]) == 0.0  # outside the 13 x 13 window
    assert float(target[0].sum()) == pytest.approx(sum(math.exp(-(a * a + b * b) / 8)
                                                       for a in range(-6, 7) for b in range(-6, 7)))
    # joint 1: row int(250 / 4 + 0.5) = 63, the last row: the Gaussian is cut, the weight stays 1
    assert weight[1].item() == 1.0 and divmod(int(target[1].argmax()), 48) == (63, 3)
    # invisible, far outside right, and left of the map with the window still touching it
    assert weight[2].item() == 0.0 and float(target[2].abs().sum()) == 0.0
    assert weight[3].item() == 0.0 and float(target[3].abs().sum()) == 0.0
    # x = -26: centre column int(-6.5 + 0.5) = -6, the window's last column is 0
    assert weight[4].item() == 1.0 and float(target[4, 3, 0]) == pytest.approx(math.exp(-36 / 8))
    assert float(target[4].sum()) == pytest.approx(sum(math.exp(-(36 + b * b) / 8) for b in range(-3, 7)))
    # x = -30: mmpose's bounds test (br < 0, br exclusive) keeps weight 1 for a window that ends at column -1
    assert weight[5].item() == 1.0 and float(target[5].abs().sum()) == 0.0


def test_fliplr_joints_swaps_pairs_and_mirrors():
    joints = np.arange(34, dtype=float).reshape(17, 2)
    visible = np.ones(17)
    visible[3] = 0
    flipped, vis = fliplr_joints(joints, visible, img_width=100)
    assert vis[4] == 0 and vis[3] == 1  # visibility moves with the swap
    assert flipped[1].tolist() == [100 - 1 - joints[2, 0], joints[2, 1]]
    assert flipped[0].tolist() == [99 - joints[0, 0], joints[0, 1]]
    assert flipped[4].tolist() == [0.0, 0.0]  # invisible (left ear 3 moved to 4) zeroed
    twice, _ = fliplr_joints(flipped, vis, 100)
    keep = vis[COCO_FLIP_PAIRS[1][0]] > 0
    assert keep and np.allclose(twice[visible > 0], joints[visible > 0])

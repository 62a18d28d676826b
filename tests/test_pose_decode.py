"""Heatmap decoding (mmpose's default post-processing), flip-back and the crop -> heatmap -> image round trip."""
import numpy as np
import pytest
import torch

from vitlab.pose.data import warp_affine
from vitlab.pose.decode import flip_back, heatmap_argmax, heatmap_to_image, keypoints_from_heatmaps, quarter_offset
from vitlab.pose.targets import COCO_FLIP_PAIRS, affine_matrix, apply_affine, box_to_center_scale, render_gaussians

HM = (48, 64)  # heatmap (width, height)


def _decode_heatmap_coords(heatmaps, post_process="default"):
    """Decode in heatmap pixels: an identity crop (center = heatmap centre, scale so that k = 1)."""
    W, H = heatmaps.shape[-1], heatmaps.shape[-2]
    n = heatmaps.shape[0]
    center = torch.tensor([[W / 2, H / 2]] * n, dtype=torch.float64)
    scale = torch.tensor([[W / 200, H / 200]] * n, dtype=torch.float64)
    return keypoints_from_heatmaps(heatmaps, center, scale, post_process)


def test_subpixel_positions_recovered_within_a_quarter_pixel():
    g = torch.Generator().manual_seed(0)
    pts = torch.stack([2.5 + torch.rand(200, generator=g) * (HM[0] - 5),
                       2.5 + torch.rand(200, generator=g) * (HM[1] - 5)], dim=1).double()
    heatmaps = render_gaussians(pts, HM, sigma=2.0)[None]  # (1, 200, H, W): one "joint" per position
    xy, scores = _decode_heatmap_coords(heatmaps)
    err = (xy[0].double() - pts).abs()
    assert err.max() < 0.3  # |d - 0.25 sign(d)| <= 0.25 for an offset d in [-0.5, 0.5]
    assert scores.min() > 0.9
    plain, _ = _decode_heatmap_coords(heatmaps, post_process=None)
    assert (plain[0].double() - pts).abs().max() > 0.4  # the integer argmax alone is off by up to 0.5
    assert err.mean() < (plain[0].double() - pts).abs().mean()


def test_quarter_offset_moves_towards_the_higher_neighbour_inside_only():
    hm = torch.zeros(1, 3, 8, 8)
    hm[0, 0, 4, 4], hm[0, 0, 4, 5], hm[0, 0, 3, 4] = 1.0, 0.6, 0.2  # right and up are higher
    hm[0, 1, 4, 1], hm[0, 1, 4, 2] = 1.0, 0.5  # x = 1: on mmpose's excluded border
    hm[0, 2] = -1.0  # no positive maximum
    coords, maxvals = heatmap_argmax(hm)
    assert coords[0, 0].tolist() == [4, 4] and coords[0, 2].tolist() == [-1, -1] and maxvals[0, 2, 0] == -1
    refined = quarter_offset(hm, coords)
    assert refined[0, 0].tolist() == [4.25, 3.75]
    assert refined[0, 1].tolist() == [1.0, 4.0]


def test_flip_back_swaps_pairs_mirrors_and_shifts():
    hm = torch.arange(2 * 17 * 4 * 6, dtype=torch.float32).reshape(2, 17, 4, 6)
    back = flip_back(hm, COCO_FLIP_PAIRS, shift=False)
    assert torch.equal(back[:, 1], hm[:, 2].flip(-1)) and torch.equal(back[:, 0], hm[:, 0].flip(-1))
    assert torch.equal(flip_back(back, COCO_FLIP_PAIRS, shift=False), hm)  # an involution without the shift
    shifted = flip_back(hm, COCO_FLIP_PAIRS, shift=True)
    assert torch.equal(shifted[..., 1:], back[..., :-1]) and torch.equal(shifted[..., 0], back[..., 0])


def test_flip_back_with_shift_aligns_the_mirrored_prediction():
    """A perfect network on the mirrored crop puts joint j's pair at input x' = w_in - 1 - x, i.e. heatmap
    x'/4 = W - 1/4 - x/4; flipping the array back lands at x/4 - 3/4, and the one-pixel shift at x/4 + 1/4."""
    g = torch.Generator().manual_seed(1)
    pts_in = torch.stack([20 + torch.rand(17, generator=g) * 150, 20 + torch.rand(17, generator=g) * 210], 1).double()
    order = list(range(17))
    for a, b in COCO_FLIP_PAIRS:
        order[a], order[b] = b, a
    mirrored = pts_in[order].clone()
    mirrored[:, 0] = 192 - 1 - mirrored[:, 0]
    plain = render_gaussians(pts_in / 4, HM)[None]
    from_flip = render_gaussians(mirrored / 4, HM)[None]
    truth = pts_in / 4
    for shift, expected in ((False, -0.75), (True, 0.25)):
        xy, _ = _decode_heatmap_coords(flip_back(from_flip, COCO_FLIP_PAIRS, shift=shift), post_process=None)
        offset = xy[0, :, 0].double() - truth[:, 0]
        assert (offset - expected).abs().max() <= 0.5 + 1e-6
    xy, _ = _decode_heatmap_coords(0.5 * (plain + flip_back(from_flip, COCO_FLIP_PAIRS, shift=True)))
    assert (xy[0].double() - truth).abs().max() < 0.4


@pytest.mark.parametrize("box", [(40.0, 30.0, 60.0, 100.0), (300.5, 12.25, 35.0, 60.0), (5.0, 100.0, 260.0, 140.0)])
def test_affine_round_trip_crop_heatmap_image(box):
    """Image joints -> crop (matrix) -> heatmap (/4) -> image: exact geometry; the decoded heatmap adds at
    most a quarter heatmap pixel per axis, below 1 image pixel for person boxes up to ~100 px tall."""
    g = np.random.default_rng(3)
    x, y, w, h = box
    joints = np.stack([x + g.uniform(0.15, 0.85, 17) * w, y + g.uniform(0.15, 0.85, 17) * h], 1)
    center, scale = box_to_center_scale(box)
    M = affine_matrix(center, scale, 0.0, (192, 256))
    on_heatmap = torch.tensor(apply_affine(joints, M) / 4)[None]
    exact = heatmap_to_image(on_heatmap, torch.tensor(center[None]), torch.tensor(scale[None]), HM)
    assert np.abs(exact[0].numpy() - joints).max() < 1e-9
    heatmaps = render_gaussians(on_heatmap[0], HM)[None]  # the ideal network output for this crop
    xy, _ = keypoints_from_heatmaps(heatmaps, torch.tensor(center[None]), torch.tensor(scale[None]))
    err = np.linalg.norm(xy[0].double().numpy() - joints, axis=1)
    pixels_per_heatmap_px = scale[0] * 200 / 48
    assert err.max() <= 0.3 * np.sqrt(2) * pixels_per_heatmap_px
    if pixels_per_heatmap_px < 2.8:
        assert err.max() < 1.0


def test_image_blob_lands_where_the_matrix_puts_it():
    """The warped crop (grid_sample) carries an image blob to the matrix's position, sub-pixel accurate."""
    H, W = 240, 320
    p = np.array([171.3, 96.7])
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    blob = torch.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * 4.0 ** 2)).float()
    img = blob[None].repeat(3, 1, 1)
    for rot in (0.0, 25.0):
        center, scale = box_to_center_scale((120, 40, 100, 150))
        M = affine_matrix(center, scale, rot, (192, 256))
        crop = warp_affine(img, M, (192, 256))[0].double()
        cy, cx = torch.meshgrid(torch.arange(256, dtype=torch.float64), torch.arange(192, dtype=torch.float64),
                                indexing="ij")
        centroid = np.array([(crop * cx).sum() / crop.sum(), (crop * cy).sum() / crop.sum()])
        assert np.abs(centroid - apply_affine([p], M)[0]).max() < 0.1

"""Anchors (mmdet's AnchorGenerator) and the RoI level mapping against hand-computed values."""
import math

import pytest
import torch

from vitlab.detection.anchors import AnchorGenerator, anchor_inside_flags
from vitlab.detection.roi_extractor import SingleRoIExtractor, map_roi_levels


def mask_rcnn_anchors():
    return AnchorGenerator(strides=[4, 8, 16, 32, 64], ratios=[0.5, 1.0, 2.0], scales=[8])


def test_mmdet_docstring_example():
    # mmdet's AnchorGenerator docstring: AnchorGenerator([16], [1.], [1.], [9]) on a 2x2 map
    gen = AnchorGenerator([16], [1.0], [1.0], [9])
    anchors = gen.grid_priors([(2, 2)])[0]
    expected = torch.tensor([[-4.5, -4.5, 4.5, 4.5], [11.5, -4.5, 20.5, 4.5],
                             [-4.5, 11.5, 4.5, 20.5], [11.5, 11.5, 20.5, 20.5]])
    torch.testing.assert_close(anchors, expected)


def test_base_anchor_sizes_per_level():
    """Level with stride s: w = 8 s / sqrt(r), h = 8 s sqrt(r) for r = h / w in (0.5, 1, 2), centred at (0, 0)."""
    gen = mask_rcnn_anchors()
    assert gen.num_base_priors == [3] * 5
    r = math.sqrt(2.0)
    for s, base in zip([4, 8, 16, 32, 64], gen.base_anchors):
        expected = torch.tensor([[-4 * s * r, -2 * s * r, 4 * s * r, 2 * s * r],   # ratio 0.5: wide
                                 [-4 * s, -4 * s, 4 * s, 4 * s],                 # ratio 1: 8s x 8s
                                 [-2 * s * r, -4 * s * r, 2 * s * r, 4 * s * r]])  # ratio 2: tall
        torch.testing.assert_close(base, expected)
    # the well-known stride-4 values
    torch.testing.assert_close(gen.base_anchors[0][0], torch.tensor([-22.6274, -11.3137, 22.6274, 11.3137]),
                               atol=1e-4, rtol=0)


def test_grid_count_centres_and_order():
    gen = mask_rcnn_anchors()
    sizes = [(200, 336), (100, 168), (50, 84), (25, 42), (13, 21)]  # an 800 x 1344 padded input
    anchors = gen.grid_priors(sizes)
    assert [a.shape[0] for a in anchors] == [h * w * 3 for h, w in sizes]
    assert sum(a.shape[0] for a in anchors) == 268569
    for (h, w), s, a in zip(sizes, [4, 8, 16, 32, 64], anchors):
        centres = (a[:, :2] + a[:, 2:]) / 2
        for y, x, k in [(0, 0, 0), (0, 1, 2), (1, 0, 1), (h - 1, w - 1, 2), (h // 2, 3, 1)]:
            row = (y * w + x) * 3 + k       # row-major over cells, the three anchors of a cell together
            torch.testing.assert_close(centres[row], torch.tensor([x * s, y * s], dtype=torch.float32))
            torch.testing.assert_close(a[row] - a[row].new_tensor([x * s, y * s, x * s, y * s]), gen.base_anchors[
                [4, 8, 16, 32, 64].index(s)][k])


def test_valid_and_inside_flags():
    gen = AnchorGenerator(strides=[16], ratios=[1.0], scales=[1.0])
    flags = gen.valid_flags([(4, 5)], pad_shape=(40, 50))[0]   # ceil(40/16)=3 rows, ceil(50/16)=4 columns valid
    grid = flags.view(4, 5)
    assert grid[:3, :4].all() and not grid[3].any() and not grid[:, 4].any()
    anchors = torch.tensor([[0.0, 0, 10, 10], [-1, 0, 10, 10], [5, 5, 50, 30], [5, 5, 49.9, 29.9]])
    valid = torch.ones(4, dtype=torch.bool)
    inside = anchor_inside_flags(anchors, valid, (30, 50), allowed_border=0)
    assert inside.tolist() == [True, False, False, True]
    assert anchor_inside_flags(anchors, valid, (30, 50), allowed_border=-1).all()
    assert anchor_inside_flags(anchors, valid, (30, 50), allowed_border=1).tolist() == [True, True, True, True]


def test_level_mapping():
    """level = floor(log2(sqrt(w h) / 56 + 1e-6)) clamped to [0, 3]."""
    def rois(*sizes):
        return torch.tensor([[0, 0, 0, w, h] for w, h in sizes], dtype=torch.float32)
    sizes = [(10, 10), (111, 111), (112, 112), (56, 224), (223, 223), (224, 224), (447, 447), (448, 448),
             (1000, 900), (0, 0)]
    assert map_roi_levels(rois(*sizes), 4).tolist() == [0, 0, 1, 1, 1, 2, 2, 3, 3, 0]
    assert map_roi_levels(rois((448, 448)), 3).tolist() == [2]
    assert map_roi_levels(rois((112, 112)), 4, finest_scale=28).tolist() == [2]


def test_extractor_reads_the_mapped_level():
    feats = [torch.full((2, 3, 128 // 2 ** i, 128 // 2 ** i), float(i)) for i in range(4)]  # 512 px, strides 4-32
    feats[2][1] = 7.0  # image 1's level-2 map
    ext = SingleRoIExtractor(dict(type="RoIAlign", output_size=7, sampling_ratio=0), out_channels=3,
                             featmap_strides=[4, 8, 16, 32])
    rois = torch.tensor([[0, 10, 10, 30, 30], [0, 0, 0, 120, 120], [1, 100, 50, 220, 170], [1, 0, 0, 240, 240],
                         [0, 0, 0, 500, 500]], dtype=torch.float32)
    out = ext(feats, rois)
    assert out.shape == (5, 3, 7, 7)
    # RoIs of 20 / 120 / 120 / 240 / 500 px -> levels 0 / 1 / 1 / 2 / 3 (finest_scale 56); constant maps read exactly
    torch.testing.assert_close(out.mean((1, 2, 3)), torch.tensor([0.0, 1.0, 1.0, 7.0, 3.0]))
    assert ext(feats, rois[:0]).shape == (0, 3, 7, 7)
    with pytest.raises(ValueError, match="RoIAlign"):
        SingleRoIExtractor(dict(type="RoIPool", output_size=7))

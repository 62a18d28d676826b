"""Box overlaps on hand cases, RoI packing, and the R-CNN delta coder (hand-computed deltas, round trips,
clamping and clipping)."""
import math

import pytest
import torch

from vitlab.ops import (
    DeltaXYWHBBoxCoder, bbox2roi, box_area, box_iou, clip_boxes_to_image, elementwise_box_iou,
    elementwise_generalized_box_iou, generalized_box_iou, remove_small_boxes, roi2bbox,
)


def test_box_area():
    b = torch.tensor([[0, 0, 2, 3], [1, 1, 1, 5], [2, 2, 4.5, 3]])
    assert box_area(b).tolist() == [6.0, 0.0, 2.5]
    assert box_area(torch.tensor([[0, 0, 3, 4]], dtype=torch.int16)).tolist() == [12]


def test_box_iou_and_giou_hand_cases():
    a = torch.tensor([[0, 0, 2, 2], [0, 0, 1, 1], [0, 0, 4, 4.]])
    b = torch.tensor([[1, 1, 3, 3], [2, 0, 3, 1], [1, 1, 2, 2.]])
    iou = box_iou(a, b)
    assert iou.shape == (3, 3)
    # overlap 1 / union 7; disjoint; contained (1 / 4); A[2] contains every b
    expect_iou = torch.tensor([[1 / 7, 0, 1 / 4], [0, 0, 0], [4 / 16, 1 / 16, 1 / 16]])
    torch.testing.assert_close(iou, expect_iou)
    g = generalized_box_iou(a, b)
    # enclosing areas: row 0: 9, 6, 4; row 1: 9, 3, 4; row 2: 16 (= the union) everywhere
    expect_g = torch.tensor([
        [1 / 7 - (9 - 7) / 9, 0 - (6 - 5) / 6, 1 / 4],
        [0 - (9 - 5) / 9, 0 - (3 - 2) / 3, 0 - (4 - 2) / 4],
        [4 / 16, 1 / 16, 1 / 16],
    ])
    torch.testing.assert_close(g, expect_g)
    assert torch.all(g <= iou + 1e-7) and torch.all(g >= -1)


def test_elementwise_forms():
    a = torch.tensor([[0, 0, 2, 2], [0, 0, 1, 1], [3, 3, 3, 3.]])
    b = torch.tensor([[1, 1, 3, 3], [2, 0, 3, 1], [3, 3, 3, 3.]])
    torch.testing.assert_close(elementwise_box_iou(a, b), torch.tensor([1 / 7, 0, 0]))
    # identical zero-area boxes: the eps clamp gives 0 instead of 0/0
    torch.testing.assert_close(elementwise_generalized_box_iou(a, b), torch.tensor([1 / 7 - 2 / 9, -1 / 3, 0]))
    pa, pb = torch.rand(5, 2) * 10, torch.rand(5, 2) * 10
    a, b = torch.cat([pa, pa + 1 + torch.rand(5, 2)], 1), torch.cat([pb, pb + 1 + torch.rand(5, 2)], 1)
    torch.testing.assert_close(elementwise_box_iou(a, b), box_iou(a, b).diagonal())
    torch.testing.assert_close(elementwise_generalized_box_iou(a, b), generalized_box_iou(a, b).diagonal())
    with pytest.raises(ValueError):
        elementwise_box_iou(a, b[:3])


def test_bbox2roi_roi2bbox_clip_and_small():
    b0 = torch.tensor([[0, 0, 5, 5, 0.9], [1, 2, 3, 4, 0.8]])
    b2 = torch.tensor([[2, 2, 9, 9, 0.3]])
    rois = bbox2roi([b0, torch.zeros(0, 5), b2])
    assert rois.tolist() == [[0, 0, 0, 5, 5], [0, 1, 2, 3, 4], [2, 2, 2, 9, 9]]
    assert bbox2roi([]).shape == (0, 5)
    back = roi2bbox(rois)
    assert [t.tolist() for t in back] == [b0[:, :4].tolist(), [], b2[:, :4].tolist()]
    c = clip_boxes_to_image(torch.tensor([[-3, -1, 50, 20], [5, 35, 9, 40.]]), (30, 40))
    assert c.tolist() == [[0, 0, 40, 20], [5, 30, 9, 30]]
    s = remove_small_boxes(torch.tensor([[0, 0, 2, 2], [0, 0, 1, 5], [0, 0, 3, 1.9]]), 2.0)
    assert s.tolist() == [0]


def test_encode_hand_computed():
    p = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    g = torch.tensor([[5.0, 5.0, 25.0, 45.0]])
    # centres (5, 10) -> (15, 25), sizes (10, 20) -> (20, 40)
    d = DeltaXYWHBBoxCoder().encode(p, g)
    torch.testing.assert_close(d, torch.tensor([[1.0, 0.75, math.log(2), math.log(2)]]))
    d = DeltaXYWHBBoxCoder((0.5, 0.0, 0.0, 0.1), (0.1, 0.1, 0.2, 0.2)).encode(p, g)
    torch.testing.assert_close(d, torch.tensor([[5.0, 7.5, math.log(2) / 0.2, (math.log(2) - 0.1) / 0.2]]))
    # decoding the hand-computed deltas gives the box back
    coder = DeltaXYWHBBoxCoder((0.5, 0.0, 0.0, 0.1), (0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(coder.decode(p, d), g)
    assert DeltaXYWHBBoxCoder().encode(p.long(), g.long()).dtype == torch.float32


def random_proposals(n, gen, dtype):
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * 500
    wh = torch.rand(n, 2, generator=gen, dtype=dtype) * 200 + 2
    return torch.cat([xy, xy + wh], 1)


def random_targets(prop, gen):
    """A box per proposal: centre inside it, each side scaled by up to e^+-2 (within the ratio clip)."""
    xy, wh = prop[:, :2], prop[:, 2:] - prop[:, :2]
    c = xy + wh * torch.rand(xy.shape, generator=gen, dtype=prop.dtype)
    gwh = wh * torch.exp(torch.rand(xy.shape, generator=gen, dtype=prop.dtype) * 4 - 2)
    return torch.cat([c - gwh / 2, c + gwh / 2], 1)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
@pytest.mark.parametrize("stds", [(1.0, 1.0, 1.0, 1.0), (0.1, 0.1, 0.2, 0.2), (0.033, 0.033, 0.067, 0.067)])
def test_round_trip(dtype, tol, stds):
    gen = torch.Generator().manual_seed(int(stds[0] * 1000))
    coder = DeltaXYWHBBoxCoder((0.01, -0.02, 0.03, 0.0), stds)
    prop = random_proposals(300, gen, dtype)
    gt = random_targets(prop, gen)
    d = coder.encode(prop, gt)
    assert d.dtype == dtype and d.shape == (300, 4)
    torch.testing.assert_close(coder.decode(prop, d), gt, rtol=0, atol=tol)
    # class-specific deltas: one proposal, a different target per class
    targets = [gt, random_targets(prop, gen), prop]
    d = torch.cat([coder.encode(prop, t) for t in targets], 1)
    out = coder.decode(prop, d)
    assert out.shape == (300, 12)
    torch.testing.assert_close(out, torch.cat(targets, 1), rtol=0, atol=tol)
    # a batched (B, N, 4) form decodes image by image
    outb = coder.decode(prop.view(3, 100, 4), d.view(3, 100, 12))
    torch.testing.assert_close(outb.view(300, 12), out, rtol=0, atol=0)


def test_wh_ratio_clamp_and_border_clip():
    p = torch.tensor([[10.0, 10.0, 30.0, 20.0]])              # centre (20, 15), 20 x 10
    coder = DeltaXYWHBBoxCoder()
    out = coder.decode(p, torch.tensor([[0.0, 0.0, 10.0, -10.0]]))
    # dw, dh clamped to +-|log(0.016)|: width x 62.5, height x 0.016
    torch.testing.assert_close(out, torch.tensor([[20 - 625.0, 15 - 0.08, 20 + 625.0, 15 + 0.08]]))
    out = coder.decode(p, torch.tensor([[0.0, 0.0, 10.0, -10.0]]), wh_ratio_clip=0.5)
    torch.testing.assert_close(out, torch.tensor([[0.0, 12.5, 40.0, 17.5]]))
    # clip to (h, w) = (30, 40): x to [0, 40], y to [0, 30]; an (h, w, c) shape works too
    d = torch.tensor([[-1.0, 1.0, 1.0, 1.0]])
    raw = coder.decode(p, d)
    expect = raw.clone()
    expect[:, 0::2] = expect[:, 0::2].clamp(0, 40)
    expect[:, 1::2] = expect[:, 1::2].clamp(0, 30)
    assert raw[0, 0] < 0 and raw[0, 3] > 30
    torch.testing.assert_close(coder.decode(p, d, max_shape=(30, 40)), expect)
    torch.testing.assert_close(coder.decode(p, d, max_shape=(30, 40, 3)), expect)
    torch.testing.assert_close(DeltaXYWHBBoxCoder(clip_border=False).decode(p, d, max_shape=(30, 40)), raw)
    # class-specific deltas are clipped class by class
    out = coder.decode(p, torch.cat([d, torch.zeros(1, 4)], 1), max_shape=(30, 40))
    torch.testing.assert_close(out, torch.cat([expect, p], 1))
    # batched with one shape per image
    pb = p.expand(2, 1, 4)
    out = coder.decode(pb, d.expand(2, 1, 4), max_shape=[(30, 40), (12, 100)])
    torch.testing.assert_close(out[0], expect)
    assert out[1, 0, 3] == 12 and out[1, 0, 0] == raw[0, 0].clamp(min=0)


def test_center_clamp():
    p = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    coder = DeltaXYWHBBoxCoder(add_ctr_clamp=True, ctr_clamp=32)
    out = coder.decode(p, torch.tensor([[1.0, -1.0, -10.0, 0.0]]))
    # the centre moves at most 32 px; dw is only clamped from above
    gw = 100 * math.exp(-10)
    torch.testing.assert_close(out, torch.tensor([[82 - gw / 2, 18 - 50, 82 + gw / 2, 18 + 50]]))


def test_empty_and_errors():
    coder = DeltaXYWHBBoxCoder((0, 0, 0, 0), (0.1, 0.1, 0.2, 0.2))
    assert coder.encode(torch.zeros(0, 4), torch.zeros(0, 4)).shape == (0, 4)
    assert coder.decode(torch.zeros(0, 4), torch.zeros(0, 8), max_shape=(10, 10)).shape == (0, 8)
    with pytest.raises(ValueError):
        coder.encode(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError):
        coder.decode(torch.zeros(3, 4), torch.zeros(3, 6))
    with pytest.raises(ValueError):
        DeltaXYWHBBoxCoder((0, 0, 0), (1, 1, 1, 1))

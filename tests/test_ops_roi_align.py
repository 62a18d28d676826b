"""roi_align against a plain loop over RoIs, bins and sample points (forward and autograd gradients),
hand-computed values, and gradcheck."""
import importlib
import math

import numpy as np
import pytest
import torch

from vitlab.ops import RoIAlign, roi_align

roi_align_module = importlib.import_module("vitlab.ops.roi_align")


def loop_roi_align(x, rois, out_hw, scale, sampling_ratio, aligned):
    """One RoI, one bin, one sample point at a time; arithmetic in the input's precision, in the order
    R-CNN RoIAlign is usually written (start + bin offset + sub-cell offset)."""
    T = np.float32 if x.dtype == torch.float32 else np.float64
    oh, ow = out_hw
    _, C, H, W = x.shape
    outs = []
    for r in rois.tolist():
        b = int(r[0])
        off = T(0.5) if aligned else T(0.0)
        sx, sy = T(r[1]) * T(scale) - off, T(r[2]) * T(scale) - off
        ex, ey = T(r[3]) * T(scale) - off, T(r[4]) * T(scale) - off
        rw, rh = ex - sx, ey - sy
        if not aligned:
            rw, rh = max(rw, T(1)), max(rh, T(1))
        bh, bw = rh / T(oh), rw / T(ow)
        gh = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rh / T(oh)))
        gw = sampling_ratio if sampling_ratio > 0 else int(math.ceil(rw / T(ow)))
        count = max(gh * gw, 1)
        bins = []
        for ph in range(oh):
            for pw in range(ow):
                acc = x.new_zeros(C)
                for iy in range(gh):
                    y = sy + T(ph) * bh + T(iy + 0.5) * bh / T(gh)
                    for ix in range(gw):
                        xx = sx + T(pw) * bw + T(ix + 0.5) * bw / T(gw)
                        acc = acc + bilinear(x[b], y, xx, H, W, T)
                bins.append(acc / count)
        outs.append(torch.stack(bins, 1).view(C, oh, ow))
    if not outs:
        return x.new_zeros((0, C, oh, ow))
    return torch.stack(outs)


def bilinear(img, y, x, H, W, T):
    if y < -1 or y > H or x < -1 or x > W:
        return img.new_zeros(img.shape[0])
    y, x = max(y, T(0)), max(x, T(0))
    y0, x0 = int(y), int(x)
    if y0 >= H - 1:
        y0 = y1 = H - 1
        y = T(y0)
    else:
        y1 = y0 + 1
    if x0 >= W - 1:
        x0 = x1 = W - 1
        x = T(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - T(y0), x - T(x0)
    hy, hx = T(1) - ly, T(1) - lx
    return (float(hy * hx) * img[:, y0, x0] + float(hy * lx) * img[:, y0, x1]
            + float(ly * hx) * img[:, y1, x0] + float(ly * lx) * img[:, y1, x1])


def make_rois(gen, n, B, H, W, scale, dtype=torch.float32):
    """Boxes in image coordinates (map size / scale): inside, across and beyond the border, tiny and large,
    degenerate (zero and negative size)."""
    ih, iw = H / scale, W / scale
    c = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([iw * 1.4, ih * 1.4], dtype=dtype) \
        - torch.tensor([iw * 0.2, ih * 0.2], dtype=dtype)
    size = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([iw, ih], dtype=dtype) * 0.8
    size[: n // 4] *= 0.02                                   # tiny
    size[n // 4: n // 4 + 2] = 0                            # zero size
    size[n // 4 + 2: n // 4 + 4] *= -0.05                   # x2 < x1
    b = torch.randint(0, B, (n, 1), generator=gen).to(dtype)
    return torch.cat([b, c - size / 2, c + size / 2], 1)


CASES = [  # (H, W, scale, out, sampling_ratio, aligned)
    (9, 11, 1.0, (3, 3), 0, False),
    (9, 11, 1.0, (3, 3), 0, True),
    (9, 11, 1.0, (2, 4), 2, False),
    (9, 11, 1.0, (2, 4), 2, True),
    (8, 10, 0.25, (3, 2), 0, True),
    (8, 10, 0.25, (3, 2), 0, False),
    (8, 10, 0.25, (7, 7), 2, True),
    (8, 10, 0.25, (7, 7), 1, False),
]


@pytest.mark.parametrize("H,W,scale,out,sr,aligned", CASES)
def test_forward_and_gradient_match_loop(H, W, scale, out, sr, aligned):
    gen = torch.Generator().manual_seed(H * 100 + int(scale * 4) + sr + 10 * aligned + out[0])
    x = torch.randn(2, 3, H, W, generator=gen, requires_grad=True)
    rois = make_rois(gen, 12, 2, H, W, scale)
    y = roi_align(x, rois, out, scale, sr, aligned)
    ref = loop_roi_align(x, rois, out, scale, sr, aligned)
    assert y.shape == (12, 3, *out) and y.dtype == torch.float32
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn(y.shape, generator=gen)
    (gx,) = torch.autograd.grad(y, x, g)
    (gref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(gx, gref, rtol=1e-5, atol=1e-5)


def test_boundary_sample_points():
    """Points exactly at -1 and at H are read (clamped); just beyond them read 0."""
    x = torch.arange(1.0, 1.0 + 4 * 5).view(1, 1, 4, 5)
    # one bin, one sample point at the box centre; aligned=False keeps coordinates as given
    def at(cy, cx):
        r = torch.tensor([[0, cx - 0.5, cy - 0.5, cx + 0.5, cy + 0.5]])
        return roi_align(x, r, 1, 1.0, 1, False).item()
    assert at(4.0, 2.0) == x[0, 0, 3, 2].item()        # y == H: last row
    assert at(-1.0, 2.0) == x[0, 0, 0, 2].item()       # y == -1: first row
    assert at(2.0, 5.0) == x[0, 0, 2, 4].item()        # x == W: last column
    assert at(2.0, -1.0) == x[0, 0, 2, 0].item()
    assert at(4.25, 2.0) == 0.0 and at(-1.25, 2.0) == 0.0 and at(2.0, 5.25) == 0.0
    assert at(3.5, 2.0) == x[0, 0, 3, 2].item()        # between H-1 and H: clamped to the last row
    assert at(-0.5, 1.0) == x[0, 0, 0, 1].item()       # between -1 and 0: clamped to the first row
    assert at(1.25, 2.0) == pytest.approx(0.75 * x[0, 0, 1, 2].item() + 0.25 * x[0, 0, 2, 2].item())


def test_linear_ramp_hand_computed():
    """Bilinear sampling reproduces a linear function inside the map, so each bin is the ramp at its centre."""
    H, W = 10, 12
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    x = (3 * yy + 0.5 * xx + 1).view(1, 1, H, W)
    # aligned: box [1.5, 2.5, 5.5, 6.5] starts at (1, 2) on the map, 4 x 4, bins of 2: centres x 2, 4; y 3, 5
    out = roi_align(x, torch.tensor([[0, 1.5, 2.5, 5.5, 6.5]], dtype=torch.float64), 2, 1.0, 0, True)
    expect = torch.tensor([[3 * 3 + 0.5 * 2 + 1, 3 * 3 + 0.5 * 4 + 1],
                           [3 * 5 + 0.5 * 2 + 1, 3 * 5 + 0.5 * 4 + 1]], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], expect, rtol=0, atol=1e-12)
    # not aligned, spatial_scale 0.5: box [2, 4, 14, 10] -> map [1, 2, 7, 5], 3 x 2 bins of 2 x 1.5
    out = roi_align(x, torch.tensor([[0, 2.0, 4.0, 14.0, 10.0]], dtype=torch.float64), (2, 3), 0.5, 3, False)
    cy = torch.tensor([2 + 0.75, 2 + 2.25], dtype=torch.float64)
    cx = torch.tensor([1 + 1.0, 1 + 3.0, 1 + 5.0], dtype=torch.float64)
    torch.testing.assert_close(out[0, 0], 3 * cy[:, None] + 0.5 * cx[None, :] + 1, rtol=0, atol=1e-12)


def test_degenerate_boxes():
    x = torch.randn(1, 2, 6, 6)
    # aligned: a zero-size RoI has no sample points -> zeros
    z = roi_align(x, torch.tensor([[0, 2.0, 2.0, 2.0, 2.0]]), 2, 1.0, 0, True)
    assert torch.equal(z, torch.zeros(1, 2, 2, 2))
    # not aligned: forced to 1x1, one sample per bin at start + (p + 0.5) / 2
    z = roi_align(x, torch.tensor([[0, 2.0, 2.0, 2.0, 2.0]]), 2, 1.0, 0, False)
    ref = loop_roi_align(x, torch.tensor([[0, 2.0, 2.0, 2.0, 2.0]]), (2, 2), 1.0, 0, False)
    torch.testing.assert_close(z, ref)
    assert z.abs().sum() > 0
    # a NaN box gives zeros rather than garbage
    z = roi_align(x, torch.tensor([[0, float("nan"), 1.0, 3.0, 3.0]]), 2, 1.0, 0, True)
    assert torch.equal(z, torch.zeros(1, 2, 2, 2))


def test_large_adaptive_boxes_and_chunking(monkeypatch):
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 2, 12, 14, generator=gen, requires_grad=True)
    rois = torch.tensor([[0, -3.0, -2.0, 40.0, 30.0], [1, 1.0, 2.0, 13.0, 11.5], [1, 0.3, 0.2, 0.9, 0.4],
                         [0, 5.0, 5.0, 9.0, 6.0],
                         # 5 x 6 and 7 x 8 points per bin: one grid group, the first padded to the second
                         [0, 0.2, 0.1, 18.2, 10.1], [1, 1.0, 0.5, 25.0, 14.5]])
    ref = loop_roi_align(x, rois, (2, 3), 1.0, 0, True)       # up to 16 x 15 points per bin
    y = roi_align(x, rois, (2, 3), 1.0, 0, True)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(roi_align_module, "_MAX_PAIRS", 64)    # one RoI per chunk, and oversize chunks
    y2 = roi_align(x, rois, (2, 3), 1.0, 0, True)
    torch.testing.assert_close(y2, y, rtol=1e-6, atol=1e-6)
    g = torch.randn(y.shape, generator=gen)
    torch.testing.assert_close(torch.autograd.grad(y2, x, g)[0], torch.autograd.grad(ref, x, g)[0],
                               rtol=1e-5, atol=1e-5)


def test_list_and_tensor_forms():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 8, 8, generator=gen)
    b0 = torch.tensor([[0.0, 0.0, 5.0, 5.0], [1.0, 2.0, 7.0, 4.0]])
    b2 = torch.tensor([[2.0, 1.0, 6.0, 7.5]])
    empty = torch.zeros(0, 4)
    y_list = roi_align(x, [b0, empty, b2], 3, 1.0, 2, True)
    rois = torch.tensor([[0, 0.0, 0.0, 5.0, 5.0], [0, 1.0, 2.0, 7.0, 4.0], [2, 2.0, 1.0, 6.0, 7.5]])
    assert torch.equal(y_list, roi_align(x, rois, 3, 1.0, 2, True))
    # the third RoI reads image 2 only
    torch.testing.assert_close(y_list[2:], roi_align(x[2:], [b2], 3, 1.0, 2, True), rtol=1e-6, atol=1e-6)
    assert roi_align(x, [], (3, 4)).shape == (0, 4, 3, 4)
    assert roi_align(x, [empty, empty], 7).shape == (0, 4, 7, 7)
    assert roi_align(x, torch.zeros(0, 5), 7, 0.25, 0, True).shape == (0, 4, 7, 7)
    # an image without RoIs still backpropagates (zeros)
    xg = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(roi_align(xg, [empty], 7).sum(), xg)
    assert torch.equal(g, torch.zeros_like(x))
    m = RoIAlign((3, 3), spatial_scale=1.0, sampling_ratio=2, aligned=True)
    assert torch.equal(m(x, [b0, empty, b2]), y_list) and "aligned=True" in repr(m)


def test_errors():
    x = torch.randn(1, 2, 4, 4)
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        roi_align(x, torch.zeros(3, 4), 2)
    with pytest.raises(ValueError, match=r"\(Ki, 4\)"):
        roi_align(x, [torch.zeros(3, 5)], 2)
    with pytest.raises(ValueError, match="batch indices"):
        roi_align(x, torch.tensor([[1, 0, 0, 2, 2.0]]), 2)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        roi_align(x[0], torch.zeros(0, 5), 2)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sr", [0, 2])
def test_gradcheck(aligned, sr):
    gen = torch.Generator().manual_seed(1 + sr + aligned)
    x = torch.randn(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 0.3, 0.6, 4.1, 3.7], [1, -1.2, 2.1, 3.3, 5.9], [1, 4.6, 0.1, 7.3, 4.4]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_align(t, rois, (2, 3), 1.0, sr, aligned), (x,))
    assert torch.autograd.gradgradcheck(lambda t: roi_align(t, rois, (2, 3), 1.0, sr, aligned), (x,), fast_mode=True)
    ref = loop_roi_align(x, rois, (2, 3), 1.0, sr, aligned)
    torch.testing.assert_close(roi_align(x, rois, (2, 3), 1.0, sr, aligned), ref, rtol=1e-12, atol=1e-12)


def test_low_precision_input():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(1, 3, 8, 8, generator=gen)
    rois = torch.tensor([[0, 0.5, 1.0, 6.5, 7.0], [0, 2.0, 2.0, 4.0, 5.0]])
    y = roi_align(x.bfloat16(), rois, 2, 1.0, 0, True)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), roi_align(x.bfloat16().float(), rois, 2, 1.0, 0, True), rtol=1e-2, atol=1e-2)


def test_memory_many_rois():
    """1000 RoIs x 256 channels x 7x7 with 2x2 samples: the tensors kept for backward are the sample
    indices and weights, not per-point features."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 256, 32, 32, generator=gen, requires_grad=True)
    xy = torch.rand(1000, 2, generator=gen) * 100
    rois = torch.cat([torch.randint(0, 2, (1000, 1), generator=gen).float(), xy, xy + 4 + torch.rand(1000, 2) * 60], 1)
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = roi_align(x, rois, 7, 0.25, 2, True)
    assert y.shape == (1000, 256, 7, 7)
    assert sum(saved) < 16 * 2 ** 20, sum(saved)       # 1000*49*16 pairs: ~9.4 MB of indices and weights
    y.sum().backward()
    assert x.grad.shape == x.shape

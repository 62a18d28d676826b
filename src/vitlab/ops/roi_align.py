"""RoIAlign (He et al., "Mask R-CNN", 2017) with torchvision's semantics, in plain PyTorch.

For RoI ``(b, x1, y1, x2, y2)`` the region starts at ``x1 * spatial_scale - 0.5`` (the -0.5 only when
``aligned``); without ``aligned`` its width/height are at least 1. Each of the ``oh x ow`` bins is sampled on a
``gh x gw`` grid of points at the sub-cell centres (``sampling_ratio`` points, or ``ceil(bin size)`` per RoI when
``sampling_ratio <= 0``), each point read by bilinear interpolation, and the bin is the mean of its points.
A point with y < -1 or y > H (or x < -1 or x > W) reads 0; otherwise y is clamped to >= 0, and a point at or
beyond the last row/column reads that row/column (torchvision's ``bilinear_interpolate``).

Every sample point contributes four (pixel, weight / point count) pairs; the pairs of one bin form a bag, and
one ``F.embedding_bag`` call (weighted sum of rows of the ``(B*H*W, C)`` feature table) computes all bins.
Nothing per point and channel is materialised; the gradient w.r.t. ``input`` is the transposed weighted sum
(another ``embedding_bag``, over the pairs sorted by pixel), itself differentiable. The interpolation tables
are separable (rows per ``(roi, ph, iy)``, columns per ``(roi, pw, ix)``), and the arithmetic follows the order
of torchvision's kernel so that boundary decisions agree with it. RoIs whose adaptive grids differ are grouped
by grid size (exact up to 4 points a side, then by powers of two) and padded to the group's largest grid with
zero-weight pairs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the (pixel, weight) pairs are built in chunks of RoIs of at most this many (bounds the temporaries)
_MAX_PAIRS = 1 << 21


def _pair(size) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"output_size must be an int or (h, w), got {size}")
    return size


def _as_rois(boxes, input: Tensor) -> Tensor:
    """(K, 5) [batch_index, x1, y1, x2, y2] from a (K, 5) tensor or a list of per-image (Ki, 4) tensors."""
    if isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            raise ValueError(f"roi_align: boxes tensor must have shape (K, 5) [batch_index, x1, y1, x2, y2], "
                             f"got {tuple(boxes.shape)}")
        return boxes
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(f"roi_align: boxes must be a (K, 5) tensor or a list of (Ki, 4) tensors, got {type(boxes)}")
    parts = []
    for i, b in enumerate(boxes):
        if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b)
            raise ValueError(f"roi_align: boxes[{i}] must be a (Ki, 4) tensor, got {shape}")
        parts.append(torch.cat([torch.full_like(b[:, :1], i), b], dim=1))
    if not parts:
        return input.new_zeros((0, 5))
    return torch.cat(parts, dim=0)


def _axis_table(start: Tensor, bin_size: Tensor, grid: Tensor, pooled: int, size: int, max_grid: int):
    """Interpolation along one axis for every (roi, bin p, sample i < max_grid): low/high index and their
    weights, zero where the coordinate is outside [-1, size] or i >= the RoI's grid. Shapes (K, pooled, max_grid)."""
    dt, dev = start.dtype, start.device
    p = torch.arange(pooled, device=dev, dtype=dt).view(1, -1, 1)
    it = torch.arange(max_grid, device=dev).view(1, 1, -1)
    g = grid.view(-1, 1, 1)
    bs = bin_size.view(-1, 1, 1)
    c = start.view(-1, 1, 1) + p * bs + (it.to(dt) + 0.5) * bs / g.clamp(min=1).to(dt)
    inside = (c >= -1.0) & (c <= size) & (it < g)   # NaN coordinates are outside
    c = torch.where(inside, c, torch.zeros((), dtype=dt, device=dev)).clamp(min=0)
    low = c.long()
    edge = low >= size - 1
    low = torch.where(edge, torch.full_like(low, size - 1), low)
    high = torch.where(edge, low, low + 1)
    c = torch.where(edge, low.to(dt), c)
    w_high = c - low.to(dt)
    w_low = 1.0 - w_high
    zero = torch.zeros((), dtype=dt, device=dev)
    return low, high, torch.where(inside, w_low, zero), torch.where(inside, w_high, zero), inside


def _bucket(n: Tensor) -> Tensor:
    """Grid sizes grouped together: exact up to 4, then (4, 8], (8, 16], ..."""
    big = torch.exp2(torch.ceil(torch.log2(n.clamp(min=1).double()))).long()
    return torch.where(n <= 4, n, big)


def _roi_geometry(rois: Tensor, B: int, oh: int, ow: int, spatial_scale: float, sampling_ratio: int,
                  aligned: bool, dt, device) -> dict:
    """Per RoI: batch index, top-left corner, bin size and sample-grid size (torchvision's rules)."""
    r = rois.detach().to(device=device, dtype=dt)
    K = r.shape[0]
    batch = r[:, 0].long()
    if K and (batch.min() < 0 or batch.max() >= B):
        raise ValueError(f"roi_align: batch indices must lie in [0, {B}), got [{batch.min()}, {batch.max()}]")
    scale = torch.tensor(spatial_scale, dtype=dt, device=r.device)
    offset = 0.5 if aligned else 0.0
    x1, y1 = r[:, 1] * scale - offset, r[:, 2] * scale - offset
    x2, y2 = r[:, 3] * scale - offset, r[:, 4] * scale - offset
    rw, rh = x2 - x1, y2 - y1
    if not aligned:  # malformed RoIs become 1x1
        rw, rh = rw.clamp(min=1.0), rh.clamp(min=1.0)
    # true divisions by full tensors (a scalar divisor may become a multiplication by its reciprocal)
    bin_h, bin_w = rh / torch.full_like(rh, oh), rw / torch.full_like(rw, ow)
    if sampling_ratio > 0:
        gh = torch.full((K,), int(sampling_ratio), dtype=torch.int64, device=r.device)
        gw = gh
    else:  # adaptive: ceil(roi size / output size) points per bin side, none for empty or NaN RoIs
        gh = torch.nan_to_num(torch.ceil(bin_h), nan=0.0).clamp(min=0).long()
        gw = torch.nan_to_num(torch.ceil(bin_w), nan=0.0).clamp(min=0).long()
    return dict(batch=batch, x1=x1, y1=y1, bin_h=bin_h, bin_w=bin_w, gh=gh, gw=gw, count=(gh * gw).clamp(min=1))


def _grid_groups(gh: Tensor, gw: Tensor, oh: int, ow: int) -> tuple[Tensor, list]:
    """RoIs with sample points sorted into groups of similar grids, in chunks of at most _MAX_PAIRS
    (pixel, weight) pairs: (the RoI ids in group order, [(ids, G, Gw), ...])."""
    ids = torch.nonzero((gh > 0) & (gw > 0))[:, 0]
    key = _bucket(gh[ids]) * (1 << 32) + _bucket(gw[ids])
    key, perm = torch.sort(key, stable=True)
    ids = ids[perm]
    _, sizes = torch.unique_consecutive(key, return_counts=True)
    groups = []
    for g_ids in torch.split(ids, sizes.tolist()):
        G, Gw = int(gh[g_ids].max()), int(gw[g_ids].max())
        step = max(1, _MAX_PAIRS // (4 * oh * ow * G * Gw))
        groups += [(c_ids, G, Gw) for c_ids in torch.split(g_ids, step)]
    return ids, groups


@torch.no_grad()
def _weighted_pairs(geo: dict, ids: Tensor, groups: list, K: int, oh: int, ow: int, H: int, W: int,
                    total: int, index_dtype, dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(pixel index, weight, bag offset) of every output bin, bags in RoI order, for one embedding_bag."""
    dev = ids.device
    idx, wts = [], []
    pair_start = torch.zeros(K, dtype=torch.int64, device=dev)   # of each RoI's pairs, in group order
    bag_size = torch.zeros(K, dtype=torch.int64, device=dev)     # 0 for RoIs without sample points
    base = 0
    for c_ids, G, Gw in groups:
        i, w = _bags(c_ids, geo["batch"], geo["x1"], geo["y1"], geo["bin_h"], geo["bin_w"], geo["gh"], geo["gw"],
                     G, Gw, oh, ow, H, W, index_dtype)
        # the mean over the bin's points: 1 / count folded into the weights
        w = w.view(c_ids.shape[0], -1) / geo["count"][c_ids].to(w.dtype)[:, None]
        per_roi = oh * ow * 4 * G * Gw
        pair_start[c_ids] = base + torch.arange(c_ids.shape[0], device=dev) * per_roi
        bag_size[c_ids] = 4 * G * Gw
        idx.append(i.reshape(-1))
        wts.append(w.reshape(-1))
        base += c_ids.shape[0] * per_roi
    idx, wts = torch.cat(idx), torch.cat(wts).to(dtype)
    ordered = ids.shape[0] == K and bool(torch.equal(ids, torch.arange(K, device=dev)))
    if not ordered:  # gather the pairs RoI by RoI
        lengths = bag_size * (oh * ow)
        new_start = torch.cumsum(lengths, 0) - lengths
        perm = torch.arange(total, device=dev) + torch.repeat_interleave(
            pair_start - new_start, lengths, output_size=total)
        idx, wts = idx[perm], wts[perm]
    sizes = bag_size.repeat_interleave(oh * ow)
    return idx, wts, (torch.cumsum(sizes, 0) - sizes).to(index_dtype)


def roi_align(input: Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> Tensor:
    """torchvision.ops.roi_align: (K, C, oh, ow) features of the RoIs.

    input: (B, C, H, W); boxes: (K, 5) [batch_index, x1, y1, x2, y2] or a list of (Ki, 4) per image, in
    input-image coordinates (``spatial_scale`` maps them onto ``input``); output_size: int or (oh, ow).
    """
    if input.dim() != 4:
        raise ValueError(f"roi_align: input must be (B, C, H, W), got {tuple(input.shape)}")
    oh, ow = _pair(output_size)
    rois = _as_rois(boxes, input)
    B, C, H, W = input.shape
    K = rois.shape[0]
    if K == 0 or C == 0 or H == 0 or W == 0:
        out = input.new_zeros((K, C, oh, ow))
        # keep the result attached to the graph (an image without RoIs still backpropagates zeros)
        return out + input.sum() * 0 if input.requires_grad and out.numel() == 0 else out
    low_precision = input.dtype in (torch.float16, torch.bfloat16)
    dt = torch.float32 if low_precision else input.dtype
    if not dt.is_floating_point:
        raise TypeError(f"roi_align: input must be floating point, got {input.dtype}")
    with torch.no_grad():
        geo = _roi_geometry(rois, B, oh, ow, spatial_scale, sampling_ratio, aligned, dt, input.device)
        ids, groups = _grid_groups(geo["gh"], geo["gw"], oh, ow)
    table = input.permute(0, 2, 3, 1).reshape(B * H * W, C)
    if low_precision:
        table = table.float()
    total = sum(c.shape[0] * oh * ow * 4 * G * Gw for c, G, Gw in groups)
    index_dtype = torch.int32 if max(B * H * W, total) < 2 ** 31 else torch.int64
    if groups:  # one embedding_bag over every group (one gradient of the table in backward)
        idx, wts, offsets = _weighted_pairs(geo, ids, groups, K, oh, ow, H, W, total, index_dtype, table.dtype)
        out = _WeightedBags.apply(table, idx, offsets, wts)
    else:
        out = table.new_zeros((K * oh * ow, C))
    out = out.view(K, oh, ow, C).permute(0, 3, 1, 2).contiguous()
    return out.to(input.dtype) if low_precision else out


def _bags(k: Tensor, batch, x1, y1, bin_h, bin_w, gh, gw, G: int, Gw: int, oh: int, ow: int, H: int, W: int,
          index_dtype: torch.dtype):
    """(pixel index, weight) pairs of RoIs ``k`` on a G x Gw sample grid per bin: two (Kc * oh * ow, 4 * G * Gw)
    tensors, one row (bag) per bin, in (ph, pw) order; points of the padded grid carry weight 0 on pixel 0."""
    ylo, yhi, wyl, wyh, yin = _axis_table(y1[k], bin_h[k], gh[k], oh, H, G)     # (Kc, oh, G)
    xlo, xhi, wxl, wxh, xin = _axis_table(x1[k], bin_w[k], gw[k], ow, W, Gw)    # (Kc, ow, Gw)
    ylo, yhi, xlo, xhi = (t.to(index_dtype) for t in (ylo, yhi, xlo, xhi))
    row = batch[k].view(-1, 1, 1).to(index_dtype) * H

    def y5(t):
        return t[:, :, None, :, None]    # (Kc, oh, 1, G, 1)

    def x5(t):
        return t[:, None, :, None, :]    # (Kc, 1, ow, 1, Gw)

    rlo, rhi = y5((row + ylo) * W), y5((row + yhi) * W)
    cl, ch = x5(xlo), x5(xhi)
    valid = (y5(yin) & x5(xin))[..., None]
    idx = torch.stack([rlo + cl, rlo + ch, rhi + cl, rhi + ch], dim=-1)
    idx = torch.where(valid, idx, torch.zeros((), dtype=idx.dtype, device=idx.device))
    wyl, wyh, wxl, wxh = y5(wyl), y5(wyh), x5(wxl), x5(wxh)
    wts = torch.stack([wyl * wxl, wyl * wxh, wyh * wxl, wyh * wxh], dim=-1)
    bag = 4 * G * Gw
    return idx.reshape(-1, bag), wts.reshape(-1, bag)


class _WeightedBags(torch.autograd.Function):
    """``out[bag] = sum of w * table[pixel]`` over the bag's pairs (``F.embedding_bag``, mode "sum").

    The gradient w.r.t. ``table`` is the transposed sum, ``grad_table[pixel] = sum of w * grad[bag]`` over the
    pixel's pairs, computed as another ``embedding_bag`` after sorting the pairs by pixel (faster on CPU than
    the generic dense backward of ``embedding_bag``, and differentiable again)."""

    @staticmethod
    def forward(ctx, table: Tensor, idx: Tensor, offsets: Tensor, wts: Tensor) -> Tensor:
        ctx.save_for_backward(idx, offsets, wts)
        ctx.rows = table.shape[0]
        return F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=wts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        idx, offsets, wts = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        ends = torch.cat([offsets[1:], offsets.new_full((1,), idx.shape[0])])
        bag = torch.repeat_interleave(torch.arange(offsets.shape[0], device=idx.device, dtype=idx.dtype),
                                      (ends - offsets).long(), output_size=idx.shape[0])
        pixel, order = torch.sort(idx, stable=True)
        counts = torch.bincount(pixel, minlength=ctx.rows)
        starts = (torch.cumsum(counts, 0) - counts).to(idx.dtype)
        g = F.embedding_bag(bag[order], grad.contiguous(), starts, mode="sum", per_sample_weights=wts[order])
        return g, None, None, None


class RoIAlign(nn.Module):
    """Module form of :func:`roi_align` (torchvision.ops.RoIAlign)."""

    def __init__(self, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1, aligned: bool = False):
        super().__init__()
        self.output_size = _pair(output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def extra_repr(self) -> str:
        return (f"output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
                f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}")

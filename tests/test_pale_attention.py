"""Pale-shaped attention: partition layout, parity with an explicit per-pale loop, receptive field, padding rule."""
import math

import pytest
import torch
import torch.nn.functional as F

from vitlab.attention.pale import (PaleAttention, SeparableConvProjection, column_group_partition,
                                   column_group_reverse, pale_attention, row_group_partition, row_group_reverse)


def explicit_pale_loop(q, k, v, num_heads, pale_size, scale):
    """PS-attention written out: for every interlaced row group (row half) and column group (column half),
    gather its tokens by index, attend with an explicit softmax, scatter the result back. No padding:
    a group with fewer than s rows (non-divisible maps) simply has fewer tokens. (B, H, W, C) in and out."""
    q, k, v = (t.permute(0, 3, 1, 2) for t in (q, k, v))  # index rows/columns of NCHW maps below
    B, C, H, W = q.shape
    half, hh = C // 2, num_heads // 2
    d = C // num_heads
    out = torch.zeros(B, H, W, C, dtype=q.dtype)

    def attend(qs, ks, vs):  # (B, heads, n, d)
        return torch.softmax(qs @ ks.transpose(-1, -2) * scale, dim=-1) @ vs

    def heads(t):  # (B, half, n) -> (B, heads, n, d)
        return t.reshape(B, hh, d, -1).transpose(-1, -2)

    G = math.ceil(H / pale_size[0])
    for g in range(G):
        rows = torch.arange(g, H, G)  # interlaced rows g, g+G, g+2G, ...
        sel = [t[:, :half, rows, :].reshape(B, half, -1) for t in (q, k, v)]
        o = attend(*(heads(s) for s in sel))  # (B, hh, n, d)
        o = o.transpose(-1, -2).reshape(B, half, len(rows), W).permute(0, 2, 3, 1)
        out[:, rows, :, :half] = o
    G = math.ceil(W / pale_size[1])
    for g in range(G):
        cols = torch.arange(g, W, G)
        sel = [t[:, half:, :, cols].reshape(B, half, -1) for t in (q, k, v)]
        o = attend(*(heads(s) for s in sel))
        o = o.transpose(-1, -2).reshape(B, half, H, len(cols)).permute(0, 2, 3, 1)
        out[:, :, cols, half:] = o
    return out


@pytest.mark.parametrize("hw,pale,heads,channels", [
    ((14, 14), (7, 7), 2, 16),      # divisible, one head per half
    ((12, 8), (3, 2), 4, 32),       # divisible, rectangular map and pale
    ((7, 7), (7, 7), 8, 32),        # one group: global attention along both axes
    ((10, 13), (3, 4), 4, 24),      # non-divisible in both directions (pad-and-mask path)
    ((5, 3), (7, 7), 2, 8),         # map smaller than the pale
    ((1, 9), (2, 3), 6, 24),        # a single row
])
def test_vectorised_equals_per_pale_loop(hw, pale, heads, channels):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, *hw, channels) for _ in range(3))
    scale = (channels // heads) ** -0.5
    fast = pale_attention(q, k, v, heads, pale, scale)
    slow = explicit_pale_loop(q, k, v, heads, pale, scale)
    assert fast.shape == (2, *hw, channels)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_row_partition_groups_interlaced_rows():
    B, C, H, W, s = 1, 2, 6, 4, 3  # G = 2 groups: rows {0, 2, 4} and {1, 3, 5}
    rows = torch.arange(H).view(1, H, 1, 1).expand(B, H, W, C).float()
    part = row_group_partition(rows, s, num_heads=1)  # (B*G, 1, s*W, C)
    assert part.shape == (2, 1, s * W, C)
    assert set(part[0, 0, :, 0].tolist()) == {0.0, 2.0, 4.0}
    assert set(part[1, 0, :, 0].tolist()) == {1.0, 3.0, 5.0}
    cols = torch.arange(W).view(1, 1, W, 1).expand(B, H, W, C).float()
    part = column_group_partition(cols, 2, num_heads=2)  # W=4, s_c=2: columns {0, 2} and {1, 3}
    assert part.shape == (2, 2, H * 2, 1)
    assert set(part[0, 0, :, 0].tolist()) == {0.0, 2.0} and set(part[1, 1, :, 0].tolist()) == {1.0, 3.0}


@pytest.mark.parametrize("H,W,s,heads", [(6, 4, 3, 1), (8, 10, 2, 2), (9, 9, 9, 4)])
def test_partition_reverse_round_trip(H, W, s, heads):
    x = torch.randn(2, H, W, 8)
    assert torch.equal(row_group_reverse(row_group_partition(x, s, heads), s, 2, H, W), x)
    s_c = s if W % s == 0 else W
    assert torch.equal(column_group_reverse(column_group_partition(x, s_c, heads), s_c, 2, H, W), x)


def test_partition_rejects_unpadded_maps():
    with pytest.raises(ValueError, match="H % pale_rows"):
        row_group_partition(torch.randn(1, 7, 7, 4), 3, 2)


def _identity_attention(dim, heads, pale):
    attn = PaleAttention(dim, heads, pale).double().eval()
    attn.set_identity_projections()
    return attn


def test_identity_separable_projection_is_exact():
    proj = SeparableConvProjection(6).double().eval()
    proj.set_identity()
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    torch.testing.assert_close(proj(x), x, atol=0, rtol=0)


@pytest.mark.parametrize("H,W,pale,token", [(12, 12, (3, 3), (5, 2)),   # G = 4: rows 1,5,9 / columns 2,6,10
                                            (12, 10, (3, 3), (3, 3))])  # columns padded 10 -> 12: 3, 7 only
def test_receptive_field_is_interlaced_rows_and_columns(H, W, pale, token):
    """d out[token] / d in is non-zero exactly on the token's interlaced rows (row half) / columns (column half)."""
    C, heads = 8, 4
    torch.manual_seed(0)
    attn = _identity_attention(C, heads, pale)
    i, j = token
    Gr, Gc = math.ceil(H / pale[0]), math.ceil(W / pale[1])
    for half, lines in ((slice(0, C // 2), "rows"), (slice(C // 2, C), "cols")):
        x = torch.randn(1, H, W, C, dtype=torch.float64, requires_grad=True)
        attn(x)[0, i, j, half].sum().backward()
        touched = x.grad[0].abs().sum(-1) > 0  # (H, W)
        expected = torch.zeros(H, W, dtype=torch.bool)
        if lines == "rows":
            expected[i % Gr::Gr, :] = True
        else:
            expected[:, j % Gc::Gc] = True
        assert torch.equal(touched, expected), f"{lines} half: receptive field differs"
        other = torch.ones(C, dtype=torch.bool)
        other[half] = False
        assert x.grad[0][..., other].abs().max() == 0, "a half must not read the other half's channels"


def test_full_receptive_field_size_matches_paper():
    """With a mixing projection, one token sees s_r*W + s_c*H - s_r*s_c tokens (Sec. 3.1)."""
    H = W = 14
    s = 7
    attn = _identity_attention(8, 2, s)
    torch.nn.init.normal_(attn.proj.weight)
    x = torch.randn(1, H, W, 8, dtype=torch.float64, requires_grad=True)
    attn(x)[0, 3, 4].sum().backward()
    assert int((x.grad[0].abs().sum(-1) > 0).sum()) == s * W + s * H - s * s


def test_padded_keys_do_not_change_real_outputs():
    """10x10 map, pale 4: rows are grouped with spacing ceil(10/4) = 3 and padded to 12 rows. Row 0's
    group is rows 0, 3, 6, 9 plus padded row 12 (masked): the result is plain attention over the real rows."""
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 10, 10, 8) for _ in range(3))
    out = pale_attention(q, k, v, 2, (4, 4))
    assert torch.isfinite(out).all()
    # group spacing ceil(10/4)=3: row 0 attends rows 0,3,6,9 only; compare with plain attention over them
    rows = [0, 3, 6, 9]
    qs = q[0, 0, :, :4][None, None]                    # the 10 queries of row 0, row-half channels
    ks = k[0, rows, :, :4].reshape(1, 1, -1, 4)
    vs = v[0, rows, :, :4].reshape(1, 1, -1, 4)
    ref = F.scaled_dot_product_attention(qs, ks, vs, scale=4 ** -0.5)[0, 0]  # (10, 4)
    torch.testing.assert_close(out[0, 0, :, :4], ref, atol=1e-5, rtol=1e-5)


def test_bad_head_counts_are_rejected():
    with pytest.raises(ValueError, match="even"):
        PaleAttention(32, 3)
    with pytest.raises(ValueError, match="even"):
        pale_attention(*(torch.randn(1, 4, 4, 8),) * 3, num_heads=1, pale_size=(2, 2))
    with pytest.raises(ValueError, match="one shape"):
        pale_attention(torch.randn(1, 4, 4, 8), torch.randn(1, 4, 5, 8), torch.randn(1, 4, 4, 8), 2, (2, 2))


def test_separable_projection_is_depthwise_bn_pointwise():
    """CvT's separable projection: depth-wise 3x3 (no bias) -> BatchNorm (eval statistics) -> point-wise linear."""
    torch.manual_seed(0)
    C = 6
    proj = SeparableConvProjection(C).eval()
    with torch.no_grad():
        proj.bn.running_mean.normal_()
        proj.bn.running_var.uniform_(0.5, 2)
        proj.bn.weight.normal_()
        proj.bn.bias.normal_()
        proj.pw.bias.normal_()
    x = torch.randn(2, 5, 7, C)
    y = F.conv2d(x.permute(0, 3, 1, 2), proj.dw.weight, padding=1, groups=C)
    y = (y - proj.bn.running_mean[:, None, None]) / torch.sqrt(proj.bn.running_var[:, None, None] + proj.bn.eps)
    y = y * proj.bn.weight[:, None, None] + proj.bn.bias[:, None, None]
    y = torch.einsum("bchw,oc->bhwo", y, proj.pw.weight) + proj.pw.bias
    assert proj.dw.bias is None and proj.dw.groups == C
    torch.testing.assert_close(proj(x), y, atol=1e-5, rtol=1e-5)

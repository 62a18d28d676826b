"""Pale-shaped self-attention (PS-Attention), Wu et al., arXiv 2112.14000, Sec. 3.1-3.2.

A *pale* is s_r interlaced rows plus s_c interlaced columns of the feature map, equally spaced
(rows n, n + H/s_r, n + 2H/s_r, ...). The paper's parallel implementation (Sec. 3.2, Fig. 2)
splits channels and heads into two halves: the *row half* attends within interlaced-row groups
(s_r*W tokens each), the *column half* within interlaced-column groups (H*s_c tokens each), and
the two outputs are concatenated and projected. A token therefore sees s_r*W + s_c*H - s_r*s_c
tokens in one layer.

Both groupings are a reshape + permute of the map, so each half is one batched
``scaled_dot_product_attention`` call (no loops over pales or heads).

Sizes that are not a multiple of the pale size (the rule, used by every function here):
the map is zero-padded at the bottom (rows) / right (columns) to the next multiple
``s * G`` with ``G = ceil(H / s)`` groups; group g holds rows g, g+G, g+2G, ... (at most s of
them, spacing G) and padded positions are masked out as keys, so a real token only ever
attends to real tokens. Every group contains at least one real row (row g < G <= H), so no
softmax row is empty. Padded query positions are computed and then cropped away. When H < s
this degrades gracefully to attention over all rows. Divisible maps take the mask-free path.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def pale_groups(length: int, pale: int) -> int:
    """Number of interlaced groups G = ceil(length / pale); group g holds indices g, g+G, g+2G, ... < length."""
    if pale < 1 or length < 1:
        raise ValueError(f"pale size and map length must be positive, got pale={pale}, length={length}")
    return -(-length // pale)  # integer ceil: stays exact for symbolic sizes under torch.compile / export


def row_group_partition(x: torch.Tensor, pale_rows: int, num_heads: int) -> torch.Tensor:
    """Channels-last (B, H, W, C) -> (B*G, heads, pale_rows*W, C/heads) with G = H / pale_rows.

    Row h = i*G + g (i < pale_rows) goes to group g, so group g is the interlaced rows
    g, g+G, g+2G, ... of Sec. 3.1. ``H`` must be a multiple of ``pale_rows`` (pad first).
    Tokens inside a group are ordered (row i, column w); channel c is head c // (C/heads).
    """
    B, H, W, C = x.shape
    if H % pale_rows or C % num_heads:
        raise ValueError(f"row_group_partition needs H % pale_rows == 0 and C % num_heads == 0, got "
                         f"H={H}, pale_rows={pale_rows}, C={C}, num_heads={num_heads}")
    G, d = H // pale_rows, C // num_heads
    x = x.reshape(B, pale_rows, G, W, num_heads, d)
    x = x.permute(0, 2, 4, 1, 3, 5)  # B, G, heads, pale_rows, W, d
    return x.reshape(B * G, num_heads, pale_rows * W, d)


def row_group_reverse(x: torch.Tensor, pale_rows: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`row_group_partition`: back to channels-last (B, H, W, C)."""
    G = height // pale_rows
    num_heads, d = x.shape[1], x.shape[-1]
    x = x.reshape(batch, G, num_heads, pale_rows, width, d)
    x = x.permute(0, 3, 1, 4, 2, 5)  # B, pale_rows, G, W, heads, d
    return x.reshape(batch, height, width, num_heads * d)


def column_group_partition(x: torch.Tensor, pale_cols: int, num_heads: int) -> torch.Tensor:
    """(B, H, W, C) -> (B*G, heads, H*pale_cols, C/heads): interlaced column groups (rows of the transpose)."""
    return row_group_partition(x.transpose(1, 2), pale_cols, num_heads)


def column_group_reverse(x: torch.Tensor, pale_cols: int, batch: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`column_group_partition`: back to channels-last (B, H, W, C)."""
    return row_group_reverse(x, pale_cols, batch, width, height).transpose(1, 2)


def _group_key_mask(length: int, pale: int, other: int, batch: int, device) -> torch.Tensor | None:
    """Boolean key mask (B*G, 1, 1, pale*other), True where the key is a real (unpadded) token."""
    G = pale_groups(length, pale)
    if G * pale == length:
        return None
    index = torch.arange(pale, device=device)[None, :] * G + torch.arange(G, device=device)[:, None]  # (G, pale)
    valid = (index < length)[:, :, None].expand(G, pale, other).reshape(1, G, 1, 1, pale * other)
    return valid.expand(batch, -1, -1, -1, -1).reshape(batch * G, 1, 1, pale * other)


def _half_attention(q, k, v, pale: int, num_heads: int, scale: float, dropout_p: float, by_rows: bool):
    """One half of PS-attention on channels-last (B, H, W, C/2) maps -> (B, H, W, C/2)."""
    B, H, W, _ = q.shape
    length, other = (H, W) if by_rows else (W, H)
    G = pale_groups(length, pale)
    pad = G * pale - length
    if pad:
        padding = (0, 0, 0, 0, 0, pad) if by_rows else (0, 0, 0, pad)
        q, k, v = (F.pad(t, padding) for t in (q, k, v))
    part = row_group_partition if by_rows else column_group_partition
    rev = row_group_reverse if by_rows else column_group_reverse
    mask = _group_key_mask(length, pale, other, B, q.device)
    out = F.scaled_dot_product_attention(part(q, pale, num_heads), part(k, pale, num_heads),
                                         part(v, pale, num_heads), attn_mask=mask, dropout_p=dropout_p, scale=scale)
    Hp, Wp = (H + pad, W) if by_rows else (H, W + pad)
    out = rev(out, pale, B, Hp, Wp)
    return out[:, :H, :W] if pad else out


def pale_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, pale_size: tuple[int, int],
                   scale: float | None = None, dropout_p: float = 0.0) -> torch.Tensor:
    """PS-attention, parallel form (arXiv 2112.14000 Sec. 3.2), before the output projection.

    ``q, k, v``: channels-last (B, H, W, C). Channels [0, C/2) and the first ``num_heads/2`` heads
    form the row half (interlaced-row groups of ``pale_size[0]`` rows); channels [C/2, C) and the
    other heads the column half (``pale_size[1]`` interlaced columns). Returns (B, H, W, C): row
    half first, then column half. Any H, W: see the module docstring for the padding rule.
    """
    if q.ndim != 4 or q.shape != k.shape or q.shape != v.shape:
        raise ValueError(f"pale_attention expects q, k, v of one shape (B, H, W, C), got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    C = q.shape[-1]
    if num_heads < 2 or num_heads % 2 or C % num_heads:
        raise ValueError(f"PS-attention splits heads evenly between rows and columns: num_heads must be even "
                         f"and divide the channels, got num_heads={num_heads}, channels={C}")
    half_heads, half = num_heads // 2, C // 2
    scale = scale if scale is not None else (C // num_heads) ** -0.5
    rows = _half_attention(q[..., :half], k[..., :half], v[..., :half], pale_size[0], half_heads, scale,
                           dropout_p, True)
    cols = _half_attention(q[..., half:], k[..., half:], v[..., half:], pale_size[1], half_heads, scale,
                           dropout_p, False)
    return torch.cat([rows, cols], dim=-1)


class SeparableConvProjection(nn.Module):
    """One CvT-style separable projection (Wu et al. 2021, arXiv 2103.15808, Sec. 3.2):
    depth-wise 3x3 conv (no bias) -> BatchNorm -> point-wise linear. Channels-last (B, H, W, C) in and out."""

    def __init__(self, dim: int, bias: bool = True, kernel_size: int = 3):
        super().__init__()
        self.dw = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, bias=False)
        self.bn = nn.BatchNorm2d(dim)
        self.pw = nn.Linear(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NHWC -> NCHW is a view with channels-last strides; the convolution keeps that memory format
        return self.pw(self.bn(self.dw(x.permute(0, 3, 1, 2))).permute(0, 2, 3, 1))

    @torch.no_grad()
    def set_identity(self) -> None:
        """Make the projection exactly the identity in eval mode (centre tap, neutral BN, identity linear)."""
        centre = self.dw.kernel_size[0] // 2
        self.dw.weight.zero_()
        self.dw.weight[:, 0, centre, centre] = 1.0
        self.bn.reset_parameters()
        self.bn.running_var.fill_(1.0 - self.bn.eps)  # so that 1/sqrt(var + eps) == 1
        self.pw.weight.copy_(torch.eye(self.pw.in_features))
        if self.pw.bias is not None:
            self.pw.bias.zero_()


class PaleAttention(nn.Module):
    """PS-attention on channels-last (B, H, W, C) tokens: separable-conv ``q``/``k``/``v``, row and column
    halves, output projection ``proj``."""

    def __init__(self, dim: int, num_heads: int, pale_size: int | tuple[int, int] = 7, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if num_heads < 2 or num_heads % 2 or dim % num_heads:
            raise ValueError(f"PaleAttention needs an even num_heads dividing dim (half the heads attend along "
                             f"rows, half along columns), got dim={dim}, num_heads={num_heads}")
        self.num_heads = num_heads
        self.pale_size = (pale_size, pale_size) if isinstance(pale_size, int) else tuple(pale_size)
        if len(self.pale_size) != 2 or min(self.pale_size) < 1:
            raise ValueError(f"pale_size must be a positive int or (s_r, s_c), got {pale_size}")
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.q = SeparableConvProjection(dim, qkv_bias)
        self.k = SeparableConvProjection(dim, qkv_bias)
        self.v = SeparableConvProjection(dim, qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = pale_attention(self.q(x), self.k(x), self.v(x), self.num_heads, self.pale_size, self.scale,
                             self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, pale_size={self.pale_size}"

    def set_identity_projections(self) -> None:
        """q = k = v = x and an identity ``proj`` (eval mode): exposes the bare attention pattern (tests, plots)."""
        for proj in (self.q, self.k, self.v):
            proj.set_identity()
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(self.proj.in_features))
            self.proj.bias.zero_()

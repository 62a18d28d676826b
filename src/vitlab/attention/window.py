"""Shifted-window multi-head self-attention (Swin, Liu et al., arXiv 2103.14030, Sec. 3.2).

Tokens are split into non-overlapping ``window x window`` windows; attention runs inside every
window with a learned relative-position bias ``B`` (Eq. 4: softmax(QK^T/sqrt(d) + B)V). Every
other block cyclically shifts the map by ``window // 2`` first, and an additive mask (-100, as
in the official code) keeps tokens that came from different regions of the unshifted map apart.

Pure functions (partition / reverse / index / mask) do the bookkeeping; :class:`WindowAttention`
owns the parameters (official names ``qkv``, ``proj``, ``relative_position_bias_table`` and the
persistent int64 buffer ``relative_position_index``) and calls SDPA with the bias (+ mask) as
``attn_mask``: all windows and heads run as one batched call, no Python loop.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.layers import trunc_normal_

SHIFT_MASK_VALUE = -100.0  # the official value (not -inf): masked pairs keep a tiny weight


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window * window, C); H and W must be multiples of ``window``."""
    b, h, w, c = x.shape
    if h % window or w % window:
        raise ValueError(f"window_partition needs H and W divisible by {window}, got {h}x{w}")
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def window_reverse(windows: torch.Tensor, window: int, h: int, w: int) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, window * window, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // window, w // window, window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


def relative_position_index(window: int) -> torch.Tensor:
    """(window², window²) int64 index into the (2w-1)² bias table for every query/key pair."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shifted_window_mask(h: int, w: int, window: int, shift: int) -> torch.Tensor:
    """(nW, window², window²) additive mask for a map of ``h x w`` (multiples of ``window``)
    cyclically shifted by ``shift``: 0 inside a region, -100 between tokens of different regions."""
    region = torch.zeros(h, w)
    bounds = ((0, -window), (-window, -shift), (-shift, None))
    label = 0
    for hs in bounds:
        for ws in bounds:
            region[slice(*hs), slice(*ws)] = label
            label += 1
    ids = window_partition(region.view(1, h, w, 1), window).squeeze(-1)  # nW, window²
    diff = ids[:, None, :] - ids[:, :, None]
    return torch.zeros_like(diff).masked_fill(diff != 0, SHIFT_MASK_VALUE)


def window_attention(x: torch.Tensor, qkv_weight: torch.Tensor, qkv_bias: torch.Tensor | None,
                     proj_weight: torch.Tensor, proj_bias: torch.Tensor | None, num_heads: int,
                     bias: torch.Tensor, mask: torch.Tensor | None = None, scale: float | None = None,
                     dropout_p: float = 0.0) -> torch.Tensor:
    """Multi-head attention inside windows, one SDPA call for all windows and heads.

    ``x``: (B * nW, N, C) window tokens; ``bias``: (heads, N, N) relative-position bias;
    ``mask``: (nW, N, N) shift mask or None (windows of one image are consecutive rows of x).
    """
    bw, n, c = x.shape
    head_dim = c // num_heads
    q, k, v = F.linear(x, qkv_weight, qkv_bias).view(bw, n, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    attn_bias = bias.unsqueeze(0).to(q.dtype)  # 1, heads, N, N
    if mask is not None:
        nw = mask.shape[0]
        if bw % nw:
            raise ValueError(f"{bw} windows cannot be split into images of {nw} windows each")
        attn_bias = (attn_bias.unsqueeze(0) + mask.to(q.dtype)[None, :, None]).expand(bw // nw, -1, -1, -1, -1)
        attn_bias = attn_bias.reshape(bw, num_heads, n, n)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p,
                                         scale=scale if scale is not None else head_dim ** -0.5)
    return F.linear(out.transpose(1, 2).reshape(bw, n, c), proj_weight, proj_bias)


class WindowAttention(nn.Module):
    """W-MSA / SW-MSA with a relative-position bias table of shape ((2w-1)², heads)."""

    def __init__(self, dim: int, window_size: int, num_heads: int, qkv_bias: bool = True,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"WindowAttention: dim {dim} is not divisible by num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.attn_drop = attn_drop
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.register_buffer("relative_position_index", relative_position_index(window_size))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        trunc_normal_(self.relative_position_bias_table, std=0.02)

    def relative_position_bias(self) -> torch.Tensor:
        """(heads, N, N) bias gathered from the table."""
        n = self.window_size ** 2
        return self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        out = window_attention(x, self.qkv.weight, self.qkv.bias, self.proj.weight, self.proj.bias, self.num_heads,
                               self.relative_position_bias(), mask, self.scale,
                               self.attn_drop if self.training else 0.0)
        return self.proj_drop(out)

    def attention_weights(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B * nW, heads, N, N) attention probabilities, computed explicitly (for visualisation)."""
        bw, n, c = x.shape
        q, k, _ = self.qkv(x).view(bw, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        logits = (q * self.scale) @ k.transpose(-2, -1) + self.relative_position_bias().unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            logits = (logits.view(bw // nw, nw, self.num_heads, n, n) + mask[None, :, None]).view(bw, -1, n, n)
        return logits.softmax(-1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}"

"""Outlook attention (Yuan et al., "VOLO: Vision Outlooker for Visual Recognition", arXiv 2106.13112, Sec. 3.1).

The attention weights of each K x K window are *generated* from the window's centre token by a
linear layer (no query-key product): A = softmax(Linear(AvgPool_s(X)) * d^-1/2) in R^{K^2 x K^2}.
Every window aggregates its values Y_w = A . V_w, and overlapping window outputs are **summed**
back onto the map (fold, no renormalisation).

``outlook_attention`` is the math as a pure function on NHWC values, so that a faster kernel can
replace it without touching the module or the model; this one is the reference unfold/fold path.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def outlook_attention(v: torch.Tensor, attn: torch.Tensor, num_heads: int, kernel_size: int = 3,
                      padding: int = 1, stride: int = 2) -> torch.Tensor:
    """Aggregate values ``v`` (B, H, W, C) with generated window weights ``attn``.

    ``attn`` holds softmax-normalised weights of shape (B, heads, h*w, K*K, K*K) for ``stride > 1``
    (one K^2 x K^2 matrix per window, output slot i x input slot j, windows on an h x w = ceil(H/s)
    x ceil(W/s) grid), or (B, heads, H*W, K*K, K*K) for ``stride == 1``, where the official code
    folds each position's matrix into (2K-1)^2 neighbourhood weights. Returns (B, H, W, C).
    """
    B, H, W, C = v.shape
    d = C // num_heads
    k2 = kernel_size * kernel_size
    v_nchw = v.permute(0, 3, 1, 2)
    if stride == 1:
        big = 2 * kernel_size - 1
        n = H * W
        # (B, C*(2K-1)^2, H*W) -> (B, heads, H*W, (2K-1)^2, d)
        v_win = F.unfold(v_nchw, big, padding=2 * padding).reshape(B, num_heads, d, big * big, n).permute(0, 1, 4, 3, 2)
        w = F.fold(attn.reshape(B * num_heads * n, k2, k2), output_size=(big, big), kernel_size=kernel_size)
        w = w.reshape(B, num_heads, n, 1, big * big)
        return (w @ v_win).transpose(1, 2).reshape(B, H, W, C)
    h, w = math.ceil(H / stride), math.ceil(W / stride)
    # unfolded channel index is (head*d + c)*K^2 + slot
    v_win = F.unfold(v_nchw, kernel_size, padding=padding, stride=stride)
    v_win = v_win.reshape(B, num_heads, d, k2, h * w).permute(0, 1, 4, 3, 2)  # B, heads, hw, K^2, d
    out = (attn @ v_win).permute(0, 1, 4, 3, 2).reshape(B, C * k2, h * w)
    out = F.fold(out, output_size=(H, W), kernel_size=kernel_size, padding=padding, stride=stride)
    return out.permute(0, 2, 3, 1)


class OutlookAttention(nn.Module):
    """Outlook attention on NHWC tokens. State-dict keys (``v``, ``attn``, ``proj``) follow the official code."""

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
                 qkv_bias: bool = False, qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.kernel_size, self.padding, self.stride = num_heads, kernel_size, padding, stride
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn = nn.Linear(dim, kernel_size ** 4 * num_heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Generated weights (B, heads, windows, K^2, K^2) from the (pooled) centre tokens of ``x`` (NHWC)."""
        B = x.shape[0]
        if self.stride > 1:
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), self.stride, self.stride, ceil_mode=True).permute(0, 2, 3, 1)
        n = x.shape[1] * x.shape[2]
        k2 = self.kernel_size ** 2
        a = self.attn(x).reshape(B, n, self.num_heads, k2, k2).permute(0, 2, 1, 3, 4)
        return self.attn_drop((a * self.scale).softmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = outlook_attention(self.v(x), self.attention_weights(x), self.num_heads,
                                self.kernel_size, self.padding, self.stride)
        return self.proj_drop(self.proj(out))

"""Class attention (Touvron et al., "Going deeper with Image Transformers" (CaiT), 2021).

Only the class token queries: q from ``x[:, :1]``, keys and values from all tokens. The block
updates the class token alone and leaves the patch tokens untouched.
"""
from __future__ import annotations

import torch
from torch import nn

from .global_ import multi_head_attention


class ClassAttention(nn.Module):
    """Keys ``q``, ``kv``, ``proj`` as in VOLO/CaiT; returns the new class embedding (B, 1, C)."""

    def __init__(self, dim: int, num_heads: int = 8, head_dim: int | None = None, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim or dim // num_heads
        self.scale = qk_scale or self.head_dim ** -0.5
        inner = self.head_dim * num_heads
        self.kv = nn.Linear(dim, inner * 2, bias=qkv_bias)
        self.q = nn.Linear(dim, inner, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(inner, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        kv = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = self.q(x[:, :1]).reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)
        out = multi_head_attention(q, kv[0], kv[1], self.scale, self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, 1, -1)))

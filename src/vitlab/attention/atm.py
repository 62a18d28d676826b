"""Attention-to-Mask (ATM) cross-attention of SegViT (Zhang et al., arXiv 2210.05844, Sec. 3.1).

Class queries attend to the projected ViT tokens. Besides the attended values the module returns
the *pre-softmax* similarity averaged over heads, ``mean_h(q_h k_h^T) * scale``, one row per query;
reshaped to the token grid it is that class's mask logit (a sigmoid turns it into a mask).

The head average needs no per-head logits: summing the per-head dot products over the heads gives
the full-width dot product, so ``mean_h(q_h k_h^T) = (q k^T) / heads``. The attention output itself
goes through one fused ``scaled_dot_product_attention`` call.

Also here: :class:`PackedMultiheadAttention`, the same SDPA attention with ``nn.MultiheadAttention``'s
parameter layout (``in_proj_weight``/``in_proj_bias``/``out_proj``), which the official SegViT decoders
use for query self-attention and for the vanilla decoder of the query-upsampling head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    B, N, C = x.shape
    return x.reshape(B, N, num_heads, C // num_heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    B, H, N, d = x.shape
    return x.transpose(1, 2).reshape(B, N, H * d)


def atm_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int, scale: float,
                  dropout_p: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-head attention of projected queries (B, Nq, C) over keys/values (B, Nk, C).

    Returns ``(out, mask_logits)``: ``out`` (B, Nq, C) is softmax(q k^T * scale) v with heads merged,
    ``mask_logits`` (B, Nq, Nk) is the head-averaged pre-softmax similarity q k^T * scale.
    """
    if q.shape[-1] % num_heads:
        raise ValueError(f"channel width {q.shape[-1]} must be divisible by num_heads {num_heads}")
    out = F.scaled_dot_product_attention(_split_heads(q, num_heads), _split_heads(k, num_heads),
                                         _split_heads(v, num_heads), dropout_p=dropout_p, scale=scale)
    mask_logits = torch.matmul(q, k.transpose(-2, -1)) * (scale / num_heads)
    return _merge_heads(out), mask_logits


class ATMAttention(nn.Module):
    """Cross-attention with separate ``q``/``k``/``v`` projections (keys as in the official code).

    ``forward(query, memory)`` takes batch-first (B, Nq, C) queries and (B, Nk, C) tokens and returns
    ``(out, mask_logits)`` as :func:`atm_attention`, with ``out`` passed through ``proj``.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True, qk_scale: float | None = None,
                 attn_drop: float = 0.1, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"ATM attention width {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, mask_logits = atm_attention(self.q(query), self.k(memory), self.v(memory), self.num_heads, self.scale,
                                         self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out)), mask_logits


class PackedMultiheadAttention(nn.Module):
    """Batch-first multi-head attention with ``nn.MultiheadAttention``'s parameters, via SDPA.

    ``in_proj_weight`` (3C, C) stacks the q, k and v projections; ``out_proj`` maps back to C.
    ``forward(query, key_value)`` attends from (B, Nq, C) queries to (B, Nk, C) tokens.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} must be divisible by num_heads {num_heads}")
        self.dim, self.num_heads, self.dropout = dim, num_heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, key_value: torch.Tensor | None = None) -> torch.Tensor:
        C = self.dim
        w, b = self.in_proj_weight, self.in_proj_bias
        if key_value is None or key_value is query:
            q, k, v = F.linear(query, w, b).split(C, dim=-1)
        else:
            q = F.linear(query, w[:C], b[:C])
            k, v = F.linear(key_value, w[C:], b[C:]).split(C, dim=-1)
        out = F.scaled_dot_product_attention(_split_heads(q, self.num_heads), _split_heads(k, self.num_heads),
                                             _split_heads(v, self.num_heads),
                                             dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(_merge_heads(out))

"""SegViT-Shrunk's query-based upsampling (QU) head (Zhang et al., arXiv 2210.05844, Sec. 3.3).

A grid of learnable queries at ``img_size / shrink_ratio`` resolution decodes the features of two
ViT layers (the higher-resolution one first) with plain transformer decoders; the decoded query
grid is the feature map an :class:`~vitlab.heads.atm_decoder.ATMSingleHead` (no projection, every
decoder layer supervised) turns into class masks.

Arguments and parameter names follow the official ``TPNATMHead``; its decoders are torch's vanilla
``nn.TransformerDecoder`` (post-norm, ReLU), re-implemented here batch-first on SDPA with the same keys.
For an output size other than ``img_size`` the query grid is resized (bicubic), like a position table.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.attention.atm import PackedMultiheadAttention
from vitlab.heads.atm_decoder import ATMSingleHead, check_head_kwargs, flatten_feature
from vitlab.layers import init_weights_trunc_normal


class QueryDecoderLayer(nn.Module):
    """torch's ``TransformerDecoderLayer`` (post-norm, ReLU FFN, dropout 0.1), batch-first on SDPA."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.self_attn = PackedMultiheadAttention(d_model, nhead, dropout)
        self.multihead_attn = PackedMultiheadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout, self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(4))

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q = self.norm1(q + self.dropout1(self.self_attn(q)))
        q = self.norm2(q + self.dropout2(self.multihead_attn(q, memory)))
        return self.norm3(q + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(q))))))


class QueryDecoder(nn.Module):
    """A stack of :class:`QueryDecoderLayer` (key layout of ``nn.TransformerDecoder`` without a final norm)."""

    def __init__(self, d_model: int, nhead: int, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(QueryDecoderLayer(d_model, nhead, 4 * d_model) for _ in range(num_layers))

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            q = layer(q, memory)
        return q


class TPNATMHead(nn.Module):
    """Query-upsampling head + single-stage ATM decoder (official ``TPNATMHead`` arguments).

    ``inputs``: the backbone outputs, higher resolution first, as (B, C, h, w) maps or square
    (B, N, C) tokens; they are *not* reversed. Output conventions are those of the ATM heads.
    """

    def __init__(self, img_size: int, in_channels: int, num_classes: int, embed_dims: int = 768, num_layers: int = 3,
                 num_heads: int = 8, use_stages: int = 3, shrink_ratio: int = 16, use_proj: bool = True,
                 ignore_index: int = 255, **kwargs):
        check_head_kwargs("TPNATMHead", kwargs)
        super().__init__()
        if img_size % shrink_ratio:
            raise ValueError(f"img_size {img_size} must be divisible by shrink_ratio {shrink_ratio}")
        self.image_size, self.shrink_ratio, self.use_stages = img_size, shrink_ratio, use_stages
        self.num_classes, self.num_layers, self.ignore_index = num_classes, num_layers, ignore_index
        for i in range(use_stages):
            self.add_module(f"input_proj_{i + 1}", nn.Linear(in_channels, embed_dims) if use_proj else nn.Identity())
            self.add_module(f"proj_norm_{i + 1}", nn.LayerNorm(embed_dims) if use_proj else nn.Identity())
            self.add_module(f"decoder_{i + 1}", QueryDecoder(embed_dims, num_heads, num_layers))
        self.query_grid = (img_size // shrink_ratio, img_size // shrink_ratio)
        self.q = nn.Embedding(self.query_grid[0] * self.query_grid[1], embed_dims)
        for m in self.modules():
            init_weights_trunc_normal(m)
        self.atm = ATMSingleHead(img_size, in_channels, num_classes, embed_dims, num_layers, num_heads,
                                 use_stages=1, use_proj=False, ignore_index=ignore_index)

    def _queries(self, out_hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        grid = (max(1, out_hw[0] // self.shrink_ratio), max(1, out_hw[1] // self.shrink_ratio))
        q = self.q.weight
        if grid != self.query_grid:
            table = q.reshape(1, *self.query_grid, -1).permute(0, 3, 1, 2)
            q = F.interpolate(table, size=grid, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)[0]
        return q, grid

    def reset_classes(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.atm.reset_classes(num_classes)

    def forward(self, inputs, out_size=None):
        out = self.forward_outputs(inputs, out_size, with_aux=self.training)
        return out if self.training else out["pred"]

    def forward_outputs(self, inputs, out_size=None, with_aux: bool = True, with_pred: bool = True) -> dict:
        if isinstance(inputs, torch.Tensor):
            inputs = [inputs]
        if len(inputs) < self.use_stages:
            raise ValueError(f"TPNATMHead uses {self.use_stages} feature maps, got {len(inputs)}")
        out_hw = self.atm._out_size(out_size)
        q, grid = self._queries(out_hw)
        feats = [flatten_feature(x)[0] for x in inputs[:self.use_stages]]
        q = q.unsqueeze(0).repeat(feats[0].shape[0], 1, 1)
        for i, x in enumerate(feats):
            proj, norm = getattr(self, f"input_proj_{i + 1}"), getattr(self, f"proj_norm_{i + 1}")
            q = getattr(self, f"decoder_{i + 1}")(q, norm(proj(x)))
        q_map = q.transpose(1, 2).reshape(q.shape[0], q.shape[2], *grid)
        return self.atm.forward_outputs([q_map], out_hw, with_aux, with_pred)

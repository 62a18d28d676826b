"""Pale Transformer (Wu et al., "Pale Transformer: A General Vision Transformer Backbone with Pale-Shaped
Attention", arXiv 2112.14000). No official code was released; this implementation follows the paper.

Four stages with overlapping convolutional patch merging (7x7 stride 4, then 3x3 stride 2, each
followed by LayerNorm). A block is (Sec. 3.3, Eq. 5):

    x = x + CPE(x)                      conditional position encoding: depth-wise 3x3 conv
    x = x + DropPath(PS-Attention(LN(x)))
    x = x + DropPath(MLP(LN(x)))        MLP ratio 4, GELU

PS-Attention (:mod:`vitlab.attention.pale`) takes q, k, v from separable convolutions and splits
heads and channels evenly between interlaced-row and interlaced-column groups. Classification:
LayerNorm on the last stage, global average pool, linear head.

Design choices the paper leaves open (all are constructor arguments):
* heads: head dim 32 for Pale-T/B and 24 for Pale-S (2/4/8/16, 4/8/16/32, 4/8/16/32): an even
  head count in every stage, because half the heads attend along rows and half along columns;
* channels and heads are split exactly in half, row half first;
* pale size 7 in every stage; maps that are not a multiple of it are padded and the padded keys
  masked (see :mod:`vitlab.attention.pale`), so any input size works;
* separable conv: depth-wise 3x3 without bias -> BatchNorm -> point-wise with bias, one per q/k/v;
* CPE: depth-wise 3x3 with bias at the start of every block, residual, no drop-path;
* norms: pre-norm LayerNorm in blocks, LayerNorm after each patch merging, a final LayerNorm.

Tokens are NHWC (B, H, W, C) inside a stage; stages take and return NCHW.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vitlab.attention.pale import PaleAttention
from vitlab.layers import DropPath, Mlp, init_weights_trunc_normal
from vitlab.layers.drop import linear_drop_path_rates
from vitlab.models.base import VitlabModel, check_image_input, default_pretrained_cfg
from vitlab.models.features import feature_info_entry, feature_take_indices
from vitlab.models.registry import register_family, register_model


class ConvPatchMerging(nn.Module):
    """Overlapping patch merging: conv (kernel k, stride s, padding k//2) -> LayerNorm. NCHW in, NHWC out.

    Output size is ceil(H / s) x ceil(W / s) for any odd kernel (7/4, 3/2), so any input size works.
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int, stride: int, norm_eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=kernel_size // 2)
        self.norm = nn.LayerNorm(out_chans, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).permute(0, 2, 3, 1))


class PaleBlock(nn.Module):
    """CPE (residual) -> LN -> PS-attention (residual) -> LN -> MLP (residual); NHWC tokens (Eq. 5)."""

    def __init__(self, dim: int, num_heads: int, pale_size: int | tuple[int, int] = 7, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0, norm_eps: float = 1e-5, use_cpe: bool = True):
        super().__init__()
        self.cpe = nn.Conv2d(dim, dim, 3, padding=1, groups=dim) if use_cpe else None
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = PaleAttention(dim, num_heads, pale_size, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpe is not None:
            x = x + self.cpe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PaleStage(nn.Module):
    """Patch merging followed by ``depth`` Pale blocks. NCHW in, NCHW out (channels-last memory)."""

    def __init__(self, in_chans: int, dim: int, depth: int, merge_kernel: int, merge_stride: int,
                 drop_path: Sequence[float], norm_eps: float = 1e-5, **block_kwargs):
        super().__init__()
        self.downsample = ConvPatchMerging(in_chans, dim, merge_kernel, merge_stride, norm_eps)
        self.blocks = nn.Sequential(*[PaleBlock(dim, drop_path=drop_path[i], norm_eps=norm_eps, **block_kwargs)
                                      for i in range(depth)])

    def forward(self, x: torch.Tensor, run_blocks=None) -> torch.Tensor:
        x = self.downsample(x)
        x = run_blocks(self.blocks, x) if run_blocks is not None else self.blocks(x)
        return x.permute(0, 3, 1, 2)


def _per_stage(value, n: int, name: str) -> list:
    """Broadcast a single number to one entry per stage; check a sequence has one entry per stage."""
    if isinstance(value, (int, float)):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"PaleTransformer needs {name} as one value or one entry per stage ({n}), got {value}")
    return value


class PaleTransformer(VitlabModel):
    """Pale Transformer backbone + classifier.

    ``embed_dims``/``depths``/``num_heads``/``pale_size``/``mlp_ratios`` give one entry per stage
    (``pale_size`` and ``mlp_ratios`` may be a single value; a stage's pale size may be an (s_r, s_c) pair).
    ``stem_kernel``/``stem_stride`` and ``merge_kernel``/``merge_stride`` shape the patch merging.
    Every stage's ``num_heads`` must be even (half attend along rows, half along columns).
    ``img_size`` only sets the default input size in ``pretrained_cfg``: there are no position
    tables, and any input size works.
    """

    def __init__(self, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dims: Sequence[int] = (64, 128, 256, 512), depths: Sequence[int] = (2, 2, 16, 2),
                 num_heads: Sequence[int] = (2, 4, 8, 16), pale_size=7, mlp_ratios=4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, stem_kernel: int = 7, stem_stride: int = 4, merge_kernel: int = 3,
                 merge_stride: int = 2, norm_eps: float = 1e-5, use_cpe: bool = True, crop_pct: float = 0.9):
        super().__init__()
        n = len(depths)
        embed_dims = _per_stage(embed_dims, n, "embed_dims")
        num_heads = _per_stage(num_heads, n, "num_heads")
        pale_sizes = _per_stage(pale_size, n, "pale_size")
        mlp_ratios = _per_stage(mlp_ratios, n, "mlp_ratios")
        for i, (dim, heads) in enumerate(zip(embed_dims, num_heads)):
            if heads < 2 or heads % 2 or dim % heads:
                raise ValueError(f"stage {i}: num_heads must be even and divide the width (half the heads attend "
                                 f"along rows, half along columns), got width {dim} with {heads} heads")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.num_features = embed_dims[-1]
        self.drop_rate = drop_rate

        rates = linear_drop_path_rates(drop_path_rate, sum(depths))
        stages, feature_info, reduction, prev = [], [], 1, in_chans
        for i in range(n):
            kernel, stride = (stem_kernel, stem_stride) if i == 0 else (merge_kernel, merge_stride)
            reduction *= stride
            first = sum(depths[:i])
            stages.append(PaleStage(prev, embed_dims[i], depths[i], kernel, stride, rates[first:first + depths[i]],
                                    norm_eps, num_heads=num_heads[i], pale_size=pale_sizes[i],
                                    mlp_ratio=mlp_ratios[i], qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop_rate,
                                    attn_drop=attn_drop_rate, use_cpe=use_cpe))
            feature_info.append(feature_info_entry(embed_dims[i], reduction, f"stages.{i}"))
            prev = embed_dims[i]
        self.stages = nn.ModuleList(stages)
        self.feature_info = feature_info
        self.norm = nn.LayerNorm(self.num_features, eps=norm_eps)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

        self.apply(init_weights_trunc_normal)
        self.pretrained_cfg = default_pretrained_cfg(img_size, num_classes, crop_pct=crop_pct,
                                                     first_conv="stages.0.downsample.proj", classifier="head")

    # --- API ---------------------------------------------------------------------------------
    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a fresh one for ``num_classes`` (0 = identity, returns pooled features)."""
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            init_weights_trunc_normal(self.head)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def _check(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, "PaleTransformer", dtype=self._weight_dtype())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, ceil(H/32), ceil(W/32)) map of the last stage after the final LayerNorm, NCHW shape with
        channels-last memory (stride ``stem_stride * merge_stride ** (len(depths) - 1)``: 32 for the defaults)."""
        self._check(x)
        for stage in self.stages:
            x = stage(x, self._run_blocks)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
        """Stage outputs as contiguous NCHW maps at strides 4/8/16/32 (before the final norm)."""
        take = feature_take_indices(len(self.stages), indices)
        self._check(x)
        feats = []
        for i, stage in enumerate(self.stages[:max(take) + 1]):
            x = stage(x, self._run_blocks)
            if i in take:
                feats.append(x.contiguous())
        return feats


register_family("pale", PaleTransformer,
                doc="Pale Transformer with keyword arguments for every design choice (embed_dims, depths, ...)")

PALE_ARCHS = {
    "tiny": dict(embed_dims=(64, 128, 256, 512), num_heads=(2, 4, 8, 16)),
    "small": dict(embed_dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32)),
    "base": dict(embed_dims=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32)),
    "micro": dict(embed_dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), num_heads=(2, 2, 4, 4), pale_size=4,
                  img_size=64),
}


def _pale(arch: str, **kwargs) -> PaleTransformer:
    return PaleTransformer(**{"depths": (2, 2, 16, 2), "pale_size": 7, **PALE_ARCHS[arch], **kwargs})


@register_model(pretrained_cfg={"crop_pct": 0.9})
def pale_tiny(**kwargs):
    """Pale-T @224: 22M params (paper), 4.2 GMACs, 83.4% top-1 reported; no released weights."""
    return _pale("tiny", **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.9})
def pale_small(**kwargs):
    """Pale-S @224: 48M params (paper), 9.0 GMACs, 84.3% top-1 reported; no released weights."""
    return _pale("small", **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.9})
def pale_base(**kwargs):
    """Pale-B @224: 85M params (paper), 15.6 GMACs, 84.9% top-1 reported; no released weights."""
    return _pale("base", **kwargs)


@register_model
def pale_micro(**kwargs):
    """Test-sized Pale (widths 16-128, depths 1,1,2,1, pale size 4, 64x64): ~0.5M params."""
    return _pale("micro", **kwargs)

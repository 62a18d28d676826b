"""UniFormer building blocks shared by the image, light and video models (arXiv 2201.09450, Sec. 3).

A UniFormer block is ``X = DPE(X) + X; Y = MHRA(Norm(X)) + X; Z = FFN(Norm(Y)) + Y`` (Eq. 1-3),
with a depth-wise 3x3 (3x3x3) convolution as the dynamic position encoding (DPE).

* :class:`ConvBlock` ("CBlock", shallow stages): BatchNorm + local MHRA, a 1x1-conv FFN.
* :class:`AttnBlock` ("SABlock", deep stages): LayerNorm + global (or windowed) MHRA, a token MLP.

Both work on NCHW (``dims=2``) and NCTHW (``dims=3``) maps and keep the official parameter names.
``layer_scale`` multiplies each residual branch by a learnable per-channel gamma (``init_value``).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from vitlab.attention.relation import GlobalMHRA, WindowMHRA, local_relation, make_local_relation
from vitlab.layers import ConvMlp, DropPath, Mlp

UNIFORMER_LN_EPS = 1e-6      # block LayerNorms
PATCH_EMBED_LN_EPS = 1e-5    # patch-embedding LayerNorms (nn.LayerNorm default in the official code)


def _conv(dims: int):
    if dims not in (2, 3):
        raise ValueError(f"UniFormer blocks support dims=2 (image) or dims=3 (video), got {dims}")
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _batch_norm(dims: int):
    return nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d


def default_norm_layer(norm_layer=None):
    """The block LayerNorm: the official default ``partial(nn.LayerNorm, eps=1e-6)``."""
    if norm_layer is None or norm_layer == "LayerNorm(eps=1e-6)":
        return partial(nn.LayerNorm, eps=UNIFORMER_LN_EPS)
    if isinstance(norm_layer, str):
        raise ValueError(f"norm_layer must be a callable (e.g. functools.partial(nn.LayerNorm, eps=1e-6)), "
                         f"got the string {norm_layer!r}")
    return norm_layer


class ConvBlock(nn.Module):
    """CBlock: DPE; x += conv2(dwconv5(conv1(BN x))); x += ConvMlp(BN x).

    With ``layer_scale`` the two branches are scaled by gammas of shape (1, C, 1, 1[, 1]) (the
    official token-labeling models).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0,
                 act_layer=nn.GELU, dims: int = 2, layer_scale: bool = False, init_value: float = 1e-6):
        super().__init__()
        conv = _conv(dims)
        self.pos_embed = conv(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = _batch_norm(dims)(dim)
        value, affinity, proj = make_local_relation(dim, dims, kernel_size=5)
        self.conv1, self.conv2, self.attn = value, proj, affinity  # registration order = official key order
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = _batch_norm(dims)(dim)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop, dims=dims)
        self.layer_scale = layer_scale
        if layer_scale:
            shape = (1, dim) + (1,) * dims
            self.gamma_1 = nn.Parameter(init_value * torch.ones(shape))
            self.gamma_2 = nn.Parameter(init_value * torch.ones(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        y = local_relation(self.norm1(x), self.conv1, self.attn, self.conv2)
        x = x + self.drop_path(self.gamma_1 * y if self.layer_scale else y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(self.gamma_2 * y if self.layer_scale else y)


class AttnBlock(nn.Module):
    """SABlock: DPE; tokens x += MHRA(LN x); x += Mlp(LN x); back to a map.

    ``window_size`` (2-D only) restricts attention to windows (dense backbones). With
    ``layer_scale`` the branches are scaled by gammas of shape (C,).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer=nn.GELU, norm_layer=None, dims: int = 2, layer_scale: bool = False,
                 init_value: float = 1e-6, window_size: int | None = None):
        super().__init__()
        norm_layer = default_norm_layer(norm_layer)
        self.pos_embed = _conv(dims)(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm_layer(dim)
        if window_size:
            if dims != 2:
                raise ValueError("window attention is implemented for 2-D (image) maps only")
            self.attn = WindowMHRA(dim, num_heads, window_size, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                   attn_drop=attn_drop, proj_drop=drop)
        else:
            self.attn = GlobalMHRA(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                                   proj_drop=drop)
        self.window_size = window_size
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma_1 = nn.Parameter(init_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        shape = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, C)
        y = self.norm1(tokens)
        if self.window_size:
            y = self.attn(y.view(shape[0], shape[2], shape[3], shape[1])).reshape(tokens.shape)
        else:
            y = self.attn(y)
        tokens = tokens + self.drop_path(self.gamma_1 * y if self.layer_scale else y)
        y = self.mlp(self.norm2(tokens))
        tokens = tokens + self.drop_path(self.gamma_2 * y if self.layer_scale else y)
        return tokens.transpose(1, 2).reshape(shape)


class PatchEmbed(nn.Module):
    """Strided convolution followed by a LayerNorm over channels (eps 1e-5); NC... in and out."""

    def __init__(self, in_chans: int, embed_dim: int, kernel_size, stride, padding=0, dims: int = 2):
        super().__init__()
        self.norm = nn.LayerNorm(embed_dim, eps=PATCH_EMBED_LN_EPS)
        self.proj = _conv(dims)(in_chans, embed_dim, kernel_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        return self.norm(x.movedim(1, -1)).movedim(-1, 1).contiguous()


class ConvStemEmbed(nn.Module):
    """Overlapping convolutional stem (the S+ / light models' ``conv_stem=True``).

    ``first=True``: conv3x3 s2 (C/2) -> BN -> GELU -> conv3x3 s2 (C) -> BN (stride 4, keys proj.{0,1,3,4});
    otherwise conv3x3 s2 -> BN (keys proj.{0,1}).
    """

    def __init__(self, in_chans: int, embed_dim: int, first: bool):
        super().__init__()
        if first:
            self.proj = nn.Sequential(
                nn.Conv2d(in_chans, embed_dim // 2, 3, 2, 1), nn.BatchNorm2d(embed_dim // 2), nn.GELU(),
                nn.Conv2d(embed_dim // 2, embed_dim, 3, 2, 1), nn.BatchNorm2d(embed_dim))
        else:
            self.proj = nn.Sequential(nn.Conv2d(in_chans, embed_dim, 3, 2, 1), nn.BatchNorm2d(embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def stochastic_depth_rates(drop_path_rate: float, depth) -> list[list[float]]:
    """Linearly increasing drop-path rates over all blocks (``torch.linspace(0, rate, sum(depth))``), per stage."""
    total = sum(depth)
    rates = torch.linspace(0, drop_path_rate, total, device="cpu").tolist() if total else []
    out, start = [], 0
    for d in depth:
        out.append(rates[start:start + d])
        start += d
    return out


def init_uniformer_weights(module: nn.Module) -> None:
    """The official init: truncated-normal (std .02) Linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02, a=-2.0, b=2.0)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def check_stage_config(depth: list, embed_dim: list, head_dim: int, representation_size) -> None:
    """Validate the four-stage layout shared by the image and video UniFormer constructors."""
    if len(depth) != 4 or len(embed_dim) != 4:
        raise ValueError(f"UniFormer has 4 stages: depth and embed_dim need 4 entries, got {depth}, {embed_dim}")
    bad = [d for d in embed_dim[2:] if d % head_dim]
    if bad:
        raise ValueError(f"the attention stages' embed_dim must be divisible by head_dim={head_dim}; {bad} are not")
    if representation_size:
        raise ValueError("representation_size is not supported (the official pre-logits layer cannot be built: "
                         "it is sized from the list embed_dim); leave it None")

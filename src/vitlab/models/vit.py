"""Plain Vision Transformer (Dosovitskiy et al., arXiv 2010.11929), the encoder of SegViT.

16x16 patches, an optional class token, a learnable position embedding (interpolated bicubically for
other input sizes and resized when a checkpoint of another size is loaded), pre-norm blocks, and
``forward_intermediates`` returning NCHW maps of chosen blocks, as SegViT takes features from
several layers (arXiv 2210.05844, Sec. 3.2).

``shrink_idx`` turns on SegViT-Shrunk's query-based downsampling (Sec. 3.3): block ``shrink_idx``
uses the 2x-strided subsampled tokens as queries over all tokens, so that block and every later one
run at half the resolution.

Parameter names follow timm (``blocks.i.attn.qkv``, ``mlp.fc1`` ...). Checkpoints in mmseg's ViT
layout (``layers.i.ln1``, ``attn.attn.in_proj_weight``, ``ffn.layers.0.0`` ...), which SegViT uses,
are converted on load, and so are timm/AugReg files with a classifier this backbone lacks.
"""
from __future__ import annotations

import re

import torch
from torch import nn

from vitlab.attention.global_ import Attention, multi_head_attention
from vitlab.layers import DropPath, Mlp, init_weights_trunc_normal, resize_pos_embed_tokens, trunc_normal_
from vitlab.models.base import VitlabModel, check_image_input, default_pretrained_cfg
from vitlab.models.features import feature_info_entry, feature_take_indices
from vitlab.models.registry import register_family, register_model


def strided_query_tokens(x: torch.Tensor, hw: tuple[int, int], num_prefix: int):
    """Queries for query-based downsampling: prefix tokens + patch tokens at even rows/columns.

    ``x`` is (B, prefix + h*w, C); returns the (B, prefix + ceil(h/2)*ceil(w/2), C) queries and their grid.
    """
    B, _, C = x.shape
    grid = x[:, num_prefix:].reshape(B, hw[0], hw[1], C)[:, ::2, ::2]
    new_hw = (grid.shape[1], grid.shape[2])
    return torch.cat([x[:, :num_prefix], grid.reshape(B, -1, C)], dim=1), new_hw


class Block(nn.Module):
    """Pre-norm transformer block: x += Attn(LN(x)); x += MLP(LN(x)).

    ``forward(x, queries=None)``: with ``queries`` the attention is cross-attention from the queries
    to LN(x) with the block's own q/k/v weights, and the residual stream continues from the queries
    (SegViT-Shrunk's query downsampling layer).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, None, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def _cross_attention(self, queries: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        attn, C = self.attn, tokens.shape[-1]
        w, b = attn.qkv.weight, attn.qkv.bias
        q = nn.functional.linear(queries, w[:C], None if b is None else b[:C])
        k, v = nn.functional.linear(tokens, w[C:], None if b is None else b[C:]).split(C, dim=-1)
        heads = lambda t: t.reshape(t.shape[0], -1, attn.num_heads, C // attn.num_heads).transpose(1, 2)  # noqa: E731
        out = multi_head_attention(heads(q), heads(k), heads(v), attn.scale,
                                   attn.attn_drop if self.training else 0.0)
        return attn.proj_drop(attn.proj(out.transpose(1, 2).reshape(queries.shape)))

    def forward(self, x: torch.Tensor, queries: torch.Tensor | None = None) -> torch.Tensor:
        if queries is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
        else:
            x = queries + self.drop_path(self._cross_attention(self.norm1(queries), self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection (a k=s=patch convolution), NCHW in, NCHW out."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class VisionTransformer(VitlabModel):
    """ViT with timm-style arguments plus the options SegViT's encoders need.

    ``with_cls_token=False`` keeps the class-token parameter and its position slot (as mmseg's ViT does)
    but drops the token after the position embedding. ``final_norm`` applies the last LayerNorm
    (mmseg's segmentation configs turn it off). ``shrink_idx`` enables query-based downsampling at that
    block. ``forward_intermediates`` gives NCHW maps of the patch tokens after the chosen blocks.
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, class_token: bool = True, with_cls_token: bool = True,
                 global_pool: str = "token", drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, norm_eps: float = 1e-6, final_norm: bool = True,
                 shrink_idx: int | None = None, interpolate_mode: str = "bicubic"):
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be divisible by patch_size {patch_size}")
        if shrink_idx is not None and not 0 < shrink_idx < depth:
            raise ValueError(f"shrink_idx must lie in (0, depth={depth}), got {shrink_idx}")
        if global_pool == "token" and not (class_token and with_cls_token):
            global_pool = "avg"
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.global_pool, self.interpolate_mode = num_classes, global_pool, interpolate_mode
        self.with_cls_token = class_token and with_cls_token
        self.num_prefix_tokens = 1 if class_token else 0
        self.shrink_idx = shrink_idx
        self.num_features = self.embed_dim = embed_dim
        self.grid_size = (img_size // patch_size, img_size // patch_size)

        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1],
                                                  embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, dpr[i],
                                          norm_eps) for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps) if final_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [feature_info_entry(embed_dim, patch_size * (2 if shrink_idx is not None and i >= shrink_idx
                                                                          else 1), f"blocks.{i}") for i in range(depth)]

        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        self.apply(init_weights_trunc_normal)
        self.pretrained_cfg = default_pretrained_cfg(img_size, num_classes, crop_pct=0.9, mean=(0.5, 0.5, 0.5),
                                                     std=(0.5, 0.5, 0.5), first_conv="patch_embed.proj",
                                                     classifier="head")

    # --- API ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        init_weights_trunc_normal(self.head)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        check_image_input(x, self.in_chans, "VisionTransformer", multiple_of=self.patch_size,
                          dtype=self._weight_dtype())
        x = self.patch_embed(x)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        pos = self.pos_embed
        if hw != self.grid_size:
            pos = resize_pos_embed_tokens(pos, hw, self.num_prefix_tokens, self.grid_size, self.interpolate_mode)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = self.pos_drop(x + pos)
        if self.cls_token is not None and not self.with_cls_token:
            x = x[:, 1:]
        return x, hw

    def _run(self, x: torch.Tensor, collect: set[int] = frozenset()):
        """Run the blocks; returns final tokens and NCHW maps of the patch tokens after blocks in ``collect``."""
        x, hw = self._embed(x)
        prefix = 1 if self.with_cls_token else 0
        feats = []
        for i, block in enumerate(self.blocks):
            if i == self.shrink_idx:
                queries, hw = strided_query_tokens(x, hw, prefix)
                x = block(x, queries)
            elif self.grad_checkpointing and self.training and not torch.jit.is_scripting():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
            if i == len(self.blocks) - 1:
                x = self.norm(x)
            if i in collect:
                t = x[:, prefix:]
                feats.append(t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *hw))
        return x, feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, P + N, C) tokens after the last block and the final LayerNorm (none with ``final_norm=False``):
        P = 1 class token first when the model keeps one (``class_token`` and ``with_cls_token``), else 0,
        then N = h * w patch tokens row-major, h = H / patch_size, w = W / patch_size (ceil(h / 2) x
        ceil(w / 2) after query downsampling at ``shrink_idx``)."""
        return self._run(x)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        prefix = 1 if self.with_cls_token else 0
        x = x[:, 0] if self.global_pool == "token" else x[:, prefix:].mean(1)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
        """NCHW maps (B, C, h, w) of the patch tokens after the chosen blocks (shallow -> deep)."""
        take = feature_take_indices(len(self.blocks), indices)
        return self._run(x, set(take))[1]

    # --- checkpoints -----------------------------------------------------------------------------
    def checkpoint_filter(self, state_dict: dict, notes: list[str]) -> dict:
        """Convert mmseg's ViT layout, drop a classifier/norm this model lacks, resize the position table."""
        if any(k.startswith("layers.") for k in state_dict):
            state_dict = convert_mmseg_vit(state_dict)
            notes.append("converted mmseg ViT keys (layers.i.ln1/attn.attn/ffn) to blocks.i.norm1/attn/mlp")
        own = self.state_dict()
        extra = sorted(k for k in state_dict if k not in own and k.split(".")[0] in ("head", "norm", "fc_norm"))
        if extra:
            state_dict = {k: v for k, v in state_dict.items() if k not in extra}
            notes.append(f"ignored {', '.join(extra)} (this backbone has no such module)")
        pos = state_dict.get("pos_embed")
        if pos is not None and pos.shape != self.pos_embed.shape:
            side = int(round((pos.shape[1] - self.num_prefix_tokens) ** 0.5))
            old_prefix = pos.shape[1] - side * side
            if old_prefix > self.num_prefix_tokens:
                pos = pos[:, old_prefix - self.num_prefix_tokens:]
            resized = resize_pos_embed_tokens(pos, self.grid_size, self.num_prefix_tokens, (side, side))
            notes.append(f"resized pos_embed {tuple(state_dict['pos_embed'].shape)} -> {tuple(resized.shape)} "
                         f"({self.interpolate_mode})")
            state_dict = {**state_dict, "pos_embed": resized}
        return state_dict


_MMSEG_RULES = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.attn\.attn\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
    (r"^layers\.(\d+)\.attn\.attn\.in_proj_bias$", r"blocks.\1.attn.qkv.bias"),
    (r"^layers\.(\d+)\.attn\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^ln1\.", "norm."),
]


def convert_mmseg_vit(state_dict: dict) -> dict:
    """Rename mmseg ``VisionTransformer`` keys to this module's (the weights themselves are unchanged)."""
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in _MMSEG_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                key = new
                break
        out[key] = value
    return out


def vit_from_mmseg_kwargs(type: str = "VisionTransformer", img_size=224, patch_size: int = 16, in_channels: int = 3,
                          embed_dims: int = 768, num_layers: int = 12, num_heads: int = 12, mlp_ratio: float = 4,
                          out_indices=-1, qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                          drop_path_rate: float = 0.0, with_cls_token: bool = True, output_cls_token: bool = False,
                          norm_cfg=None, act_cfg=None, patch_norm: bool = False, final_norm: bool = False,
                          interpolate_mode: str = "bicubic", num_fcs: int = 2, norm_eval: bool = False,
                          with_cp: bool = False, pretrained=None, init_cfg=None, shrink_idx: int | None = None):
    """Build a :class:`VisionTransformer` from mmseg ``VisionTransformer``/SegViT ``vit_shrink`` arguments.

    Returns ``(model, out_indices)``; the unsupported options (patch norm, output class token,
    non-GELU activations, other FFN depths) raise instead of being silently ignored.
    """
    if type not in ("VisionTransformer", "vit_shrink"):
        raise ValueError(f"backbone type must be 'VisionTransformer' or 'vit_shrink', got {type!r}")
    if patch_norm or output_cls_token or num_fcs != 2 or (act_cfg and act_cfg.get("type", "GELU") != "GELU"):
        raise NotImplementedError("patch_norm, output_cls_token, num_fcs != 2 and non-GELU activations are not "
                                  "supported")
    if type == "vit_shrink" and shrink_idx is None:
        shrink_idx = 8
    if isinstance(img_size, (tuple, list)):
        if img_size[0] != img_size[1]:
            raise ValueError(f"only square img_size is supported, got {img_size}")
        img_size = img_size[0]
    eps = (norm_cfg or {}).get("eps", 1e-5)  # mmcv's LN default; SegViT's configs pass 1e-6
    indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
    indices = [i + num_layers if i < 0 else i for i in indices]
    model = VisionTransformer(img_size, patch_size, in_channels, 0, embed_dims, num_layers, num_heads, mlp_ratio,
                              qkv_bias, True, with_cls_token, "token", drop_rate, attn_drop_rate, drop_path_rate, eps,
                              final_norm, shrink_idx, interpolate_mode)
    model.set_grad_checkpointing(with_cp)
    return model, indices


register_family("vit", VisionTransformer, doc="plain ViT with timm-style arguments (embed_dim, depth, ...)")


@register_model(pretrained_cfg={"crop_pct": 0.9})
def vit_base_patch16(**kwargs):
    """ViT-B/16 @224: 86.6M params, 17.6 GMACs."""
    return VisionTransformer(**{"img_size": 224, "embed_dim": 768, "depth": 12, "num_heads": 12, **kwargs})


@register_model(pretrained_cfg={"crop_pct": 0.9})
def vit_large_patch16(**kwargs):
    """ViT-L/16 @224: 304.3M params, 61.6 GMACs."""
    return VisionTransformer(**{"img_size": 224, "embed_dim": 1024, "depth": 24, "num_heads": 16, **kwargs})


@register_model(pretrained_cfg={"crop_pct": 0.9})
def vit_micro(**kwargs):
    """Test-sized ViT: patch 16, width 64, depth 4, 2 heads, 64x64 inputs (~0.2M params)."""
    return VisionTransformer(**{"img_size": 64, "embed_dim": 64, "depth": 4, "num_heads": 2, "num_classes": 10,
                                **kwargs})

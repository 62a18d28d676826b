"""Swin Transformer (Liu et al., arXiv 2103.14030) as used by EsViT (Li et al., arXiv 2106.09785).

A 4-stage hierarchy: a ``patch_size`` convolution embeds patches, every stage runs pairs of
window / shifted-window attention blocks (:mod:`vitlab.attention.window`), and patch merging
(2x2 neighbours -> LayerNorm(4C) -> Linear(4C, 2C)) halves the resolution between stages.

Behaviour of the EsViT code that this module keeps (so official checkpoints give official numbers):

* window size and shift are fixed **at construction** from ``img_size``: a stage whose
  construction resolution is <= the window uses window = that resolution and no shift;
* a smaller input (a 96-px local crop) is zero-padded bottom/right after ``norm1`` to a multiple of
  the window, and the padded tokens are *not* masked out of attention;
* the shift mask (-100 between regions) is built for the padded size of the actual input;
* patch merging sits at the **end** of stage i (keys ``layers.i.downsample``); timm's layout
  (``layers.(i+1).downsample``, ``head.fc``) is remapped by :meth:`SwinTransformer.checkpoint_filter`.

Tokens are NHWC (B, H, W, C) inside the network; ``forward_features`` returns the final
LayerNorm tokens as (B, N, C), the "region" features of EsViT.
"""
from __future__ import annotations

import math
import re
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.attention.window import WindowAttention, shifted_window_mask, window_partition, window_reverse
from vitlab.layers import DropPath, Mlp, init_weights_trunc_normal
from vitlab.models.base import VitlabModel, check_image_input, default_pretrained_cfg
from vitlab.models.features import feature_info_entry, feature_take_indices
from vitlab.models.registry import register_family, register_model

ESVIT_LN_EPS = 1e-6


def parse_norm_layer(norm_layer):
    """Accept a norm class/partial or the string form ``"LayerNorm(eps=1e-6)"`` of an official config."""
    if not isinstance(norm_layer, str):
        return norm_layer
    m = re.fullmatch(r"\s*LayerNorm\s*(?:\(\s*(?:eps\s*=\s*([0-9.eE+-]+))?\s*\))?\s*", norm_layer)
    if not m:
        raise ValueError(f"norm_layer must be a module class or 'LayerNorm(eps=...)', got {norm_layer!r}")
    return partial(nn.LayerNorm, eps=float(m.group(1))) if m.group(1) else nn.LayerNorm


class SwinBlock(nn.Module):
    """x += (S)W-MSA(LN(x)); x += MLP(LN(x)) on NHWC tokens (the official ``SwinTransformerBlock``)."""

    def __init__(self, dim: int, input_resolution: tuple[int, int], num_heads: int, window_size: int = 7,
                 shift_size: int = 0, mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution = tuple(input_resolution)
        if min(self.input_resolution) <= window_size:  # the window shrinks to the (construction) map
            window_size, shift_size = min(self.input_resolution), 0
        if not 0 <= shift_size < window_size:
            raise ValueError(f"shift_size must be in [0, {window_size}), got {shift_size}")
        self.window_size, self.shift_size = window_size, shift_size
        self.norm1 = norm_layer(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self._mask_cache: dict = {}

    def shift_mask(self, hp: int, wp: int, device) -> torch.Tensor | None:
        """The shift mask of a padded ``hp x wp`` map (None without shift), cached per size and device."""
        if self.shift_size == 0:
            return None
        key = (hp, wp, str(device))
        if key not in self._mask_cache:
            self._mask_cache[key] = shifted_window_mask(hp, wp, self.window_size, self.shift_size).to(device)
        return self._mask_cache[key]

    def _windows(self, x: torch.Tensor):
        """Pad, shift and partition normed NHWC tokens; returns windows and what is needed to undo it."""
        _, h, w, _ = x.shape
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))  # padded tokens are zeros, not masked (official)
        if self.shift_size:
            x = torch.roll(x, shifts=(-self.shift_size, -self.shift_size), dims=(1, 2))
        mask = self.shift_mask(x.shape[1], x.shape[2], x.device)
        return window_partition(x, ws), mask, (h, w, x.shape[1], x.shape[2])

    def _merge(self, windows: torch.Tensor, sizes) -> torch.Tensor:
        h, w, hp, wp = sizes
        x = window_reverse(windows, self.window_size, hp, wp)
        if self.shift_size:
            x = torch.roll(x, shifts=(self.shift_size, self.shift_size), dims=(1, 2))
        return x[:, :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        windows, mask, sizes = self._windows(self.norm1(x))
        x = x + self.drop_path(self._merge(self.attn(windows, mask), sizes))
        return x + self.drop_path(self.mlp(self.norm2(x)))

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """(B * nW, heads, N, N) attention probabilities of this block for input ``x``."""
        windows, mask, _ = self._windows(self.norm1(x))
        return self.attn.attention_weights(windows, mask)


class PatchMerging(nn.Module):
    """2x2 neighbours -> cat([x00, x10, x01, x11]) -> LayerNorm(4C) -> Linear(4C, 2C, no bias); odd sizes are
    zero-padded."""

    def __init__(self, input_resolution, dim: int, norm_layer=nn.LayerNorm):
        super().__init__()
        self.input_resolution, self.dim = input_resolution, dim
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = norm_layer(4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[1:3]
        if h % 2 or w % 2:
            x = F.pad(x, (0, 0, 0, w % 2, 0, h % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], -1)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    """Blocks with alternating shift, then (EsViT layout) the patch merging of the next resolution."""

    def __init__(self, dim: int, input_resolution, depth: int, num_heads: int, window_size: int,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale=None, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path=0.0, norm_layer=nn.LayerNorm, downsample: bool = False):
        super().__init__()
        dpr = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            SwinBlock(dim, input_resolution, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2,
                      mlp_ratio, qkv_bias, qk_scale, drop, attn_drop, dpr[i], norm_layer) for i in range(depth)])
        self.downsample = PatchMerging(input_resolution, dim, norm_layer) if downsample else None


class SwinTransformer(VitlabModel):
    """Swin Transformer with the official EsViT constructor arguments and key names.

    ``head`` is a Linear classifier by default; EsViT replaces it with a DINO head and adds
    ``head_dense`` (see :mod:`vitlab.ssl.esvit`), which keeps the official checkpoint layout.
    """

    classifier_names = ("head",)

    def __init__(self, img_size: int = 224, patch_size: int = 4, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), window_size: int = 7,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 norm_layer=nn.LayerNorm, ape: bool = False, patch_norm: bool = True,
                 use_dense_prediction: bool = False, **kwargs):
        super().__init__()
        unknown = set(kwargs) - {"use_checkpoint", "fused_window_process"}
        if unknown:
            raise TypeError(f"SwinTransformer got unexpected arguments {sorted(unknown)}")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {list(depths)} and num_heads {list(num_heads)} need one entry per stage")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} must be a multiple of patch_size {patch_size}")
        norm_layer = parse_norm_layer(norm_layer)
        self.img_size, self.patch_size, self.in_chans = img_size, patch_size, in_chans
        self.num_classes, self.embed_dim, self.depths = num_classes, embed_dim, list(depths)
        self.num_layers = len(depths)
        self.num_features = int(embed_dim * 2 ** (self.num_layers - 1))
        self.ape, self.use_dense_prediction = ape, use_dense_prediction
        self.min_input_multiple = patch_size

        grid = img_size // patch_size
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)
        self.patch_embed.norm = norm_layer(embed_dim) if patch_norm else None
        if ape:
            self.absolute_pos_embed = nn.Parameter(torch.zeros(1, grid * grid, embed_dim))
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = [float(r) for r in np.linspace(0, drop_path_rate, sum(depths))]
        self.layers = nn.ModuleList()
        feature_info = []
        for i in range(self.num_layers):
            res = (grid // 2 ** i, grid // 2 ** i)
            self.layers.append(SwinStage(
                int(embed_dim * 2 ** i), res, depths[i], num_heads[i], window_size, mlp_ratio, qkv_bias, qk_scale,
                drop_rate, attn_drop_rate, dpr[sum(depths[:i]):sum(depths[:i + 1])], norm_layer,
                downsample=i < self.num_layers - 1))
            feature_info.append(feature_info_entry(int(embed_dim * 2 ** i), patch_size * 2 ** i, f"layers.{i}"))
        self.feature_info = feature_info
        self.norm = norm_layer(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)
        self.pretrained_cfg = default_pretrained_cfg(img_size, num_classes, crop_pct=0.875,
                                                     first_conv="patch_embed.proj", classifier="head")

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            init_weights_trunc_normal(m)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # --- API ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"absolute_pos_embed"}

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set[str]:
        return {"relative_position_bias_table"}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if isinstance(self.head, nn.Linear):
            init_weights_trunc_normal(self.head)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, "SwinTransformer", multiple_of=self.patch_size,
                          dtype=self._weight_dtype())
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # NHWC
        if self.patch_embed.norm is not None:
            x = self.patch_embed.norm(x)
        if self.ape:
            b, h, w, c = x.shape
            pos = self.absolute_pos_embed
            if pos.shape[1] != h * w:
                raise ValueError(f"absolute position embeddings were built for {self.img_size}px inputs, got "
                                 f"{h * self.patch_size}x{w * self.patch_size}")
            x = x + pos.view(1, h, w, c)
        return self.pos_drop(x)

    def _stages(self, x: torch.Tensor, on_block=None, on_stage=None) -> torch.Tensor:
        """Run all stages on NHWC tokens; optional callbacks see every block / stage output (pre-merging)."""
        for i, stage in enumerate(self.layers):
            if on_block is None:
                x = self._run_blocks(stage.blocks, x)
            else:
                for j, blk in enumerate(stage.blocks):
                    x = blk(x)
                    on_block(i, j, x)
            if on_stage is not None:
                on_stage(i, x)
            if stage.downsample is not None:
                x = stage.downsample(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, C) tokens of the last stage after the final LayerNorm (EsViT's region features), no class
        token: N = h * w row-major on the stride ``patch_size * 2 ** (num_layers - 1)`` grid (32 for the
        released models; patch merging zero-pads odd sizes, so each halving rounds up)."""
        x = self.norm(self._stages(self._embed(x)))
        return x.flatten(1, 2)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(1)
        return x if pre_logits else self.head(x)

    def forward_intermediates(self, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
        """NCHW output of each stage's blocks (before its patch merging); stride patch_size * 2**i."""
        take = set(feature_take_indices(self.num_layers, indices))
        feats = []
        self._stages(self._embed(x), on_stage=lambda i, t: feats.append(t.permute(0, 3, 1, 2)) if i in take else None)
        return feats

    def forward_last_blocks(self, x: torch.Tensor, n: int = 4) -> torch.Tensor:
        """Concatenated average-pooled outputs of the last ``n`` blocks (last-stage ones after the final norm),
        the linear-probe features of EsViT (``forward_return_n_last_blocks``)."""
        total = sum(self.depths)
        if not 0 < n <= total:
            raise ValueError(f"n must be between 1 and {total} (the number of blocks), got {n}")
        first = total - n
        pooled, counter = [], [0]

        def grab(i, j, t):
            if counter[0] >= first:
                t = self.norm(t) if i == self.num_layers - 1 else t
                pooled.append(t.mean((1, 2)))
            counter[0] += 1
        self._stages(self._embed(x), on_block=grab)
        return torch.cat(pooled, dim=-1)

    def last_attention(self, x: torch.Tensor) -> torch.Tensor:
        """Attention probabilities of the last block, (B * nW, heads, N, N)."""
        x = self._embed(x)
        for stage in self.layers[:-1]:
            x = stage.downsample(self._run_blocks(stage.blocks, x))
        blocks = self.layers[-1].blocks
        x = self._run_blocks(blocks[:-1], x)
        return blocks[-1].attention_weights(x)

    def checkpoint_filter(self, state_dict: dict, notes: list[str]) -> dict:
        """Accept the timm layout and EsViT teacher/student checkpoints that carry DINO heads."""
        sd = dict(state_dict)
        has_downsample = any(re.match(r"layers\.\d+\.downsample\.", k) for k in sd)
        if has_downsample and not any(k.startswith("layers.0.downsample.") for k in sd):
            sd = {_timm_to_esvit_key(k): v for k, v in sd.items()}
            notes.append("remapped timm layout: layers.(i+1).downsample -> layers.i.downsample, head.fc -> head")
        model_keys = set(self.state_dict())
        for k in [k for k in sd if k.endswith("relative_position_index") and k not in model_keys]:
            del sd[k]
        for k in [k for k in sd if k.endswith("relative_position_index") and k in model_keys]:
            if sd[k].shape != self.state_dict()[k].shape:
                del sd[k]
        missing_index = [k for k in model_keys if k.endswith("relative_position_index") and k not in sd]
        if missing_index:
            own = self.state_dict()
            sd.update({k: own[k] for k in missing_index})
        sd = {k: v for k, v in sd.items() if not k.endswith("attn_mask")}
        heads = [k for k in sd if k.split(".")[0] in ("head", "head_dense") and k not in model_keys]
        if heads:
            for k in heads:
                del sd[k]
            notes.append(f"ignored {len(heads)} projection-head tensors ({', '.join(sorted({k.split('.')[0] for k in heads}))}) "
                         f"that this backbone does not have")
            for k in [k for k in model_keys if k.split(".")[0] == "head" and k not in sd]:
                sd[k] = self.state_dict()[k]
                notes.append(f"kept this model's own '{k}'")
        return sd


def _timm_to_esvit_key(key: str) -> str:
    m = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
    if m:
        return f"layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}"
    if key.startswith("head.fc."):
        return "head." + key[len("head.fc."):]
    return key


register_family("swin", SwinTransformer, doc="Swin Transformer with the official (EsViT) constructor arguments")

SWIN_ARCHS = {
    "tiny": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "small": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "base": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
}


def _swin(arch: str, window_size: int, **kwargs) -> SwinTransformer:
    cfg = {"img_size": 224, "patch_size": 4, "window_size": window_size, "drop_path_rate": 0.1,
           "norm_layer": partial(nn.LayerNorm, eps=ESVIT_LN_EPS), **SWIN_ARCHS[arch], **kwargs}
    return SwinTransformer(**cfg)


@register_model(pretrained_cfg={"crop_pct": 0.875})
def swin_tiny(**kwargs):
    """Swin-T, window 7: 28.3M params, 4.5 GMACs @224 (EsViT: 75.7% k-NN, 78.0% linear)."""
    return _swin("tiny", 7, **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.875})
def swin_tiny_w14(**kwargs):
    """Swin-T, window 14: 28.3M params (EsViT: 77.0% k-NN, 78.7% linear)."""
    return _swin("tiny", 14, **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.875})
def swin_small(**kwargs):
    """Swin-S, window 7: 49.6M params, 8.7 GMACs @224 (EsViT: 77.7% k-NN, 79.5% linear)."""
    return _swin("small", 7, **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.875})
def swin_small_w14(**kwargs):
    """Swin-S, window 14: 49.7M params (EsViT: 79.1% linear)."""
    return _swin("small", 14, **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.875})
def swin_base(**kwargs):
    """Swin-B, window 7: 87.8M params, 15.4 GMACs @224 (EsViT: 78.9% k-NN, 80.4% linear)."""
    return _swin("base", 7, **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.875})
def swin_base_w14(**kwargs):
    """Swin-B, window 14: 87.9M params (EsViT: 79.3% k-NN, 81.3% linear)."""
    return _swin("base", 14, **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.0})
def swin_micro(**kwargs):
    """Micro Swin for tests and CPU pretraining (0.57M params without a classifier, 32 px): patch 4, window 4, dims 32/64/128."""
    cfg = dict(img_size=32, patch_size=4, embed_dim=32, depths=(2, 2, 2), num_heads=(2, 4, 8), window_size=4,
               drop_path_rate=0.0)
    return SwinTransformer(**{**cfg, "norm_layer": partial(nn.LayerNorm, eps=ESVIT_LN_EPS), **kwargs})

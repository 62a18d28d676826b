"""Light UniFormer XXS / XS (Li et al., arXiv 2201.09450; official ``models/uniformer_light.py``).

The hourglass design: stages 3-4 carry a class token and prune tokens Evo-ViT style
(Xu et al., arXiv 2108.01390). A running "global attention" score (the class token's attention
to every patch, mixed with ``trade_off``) ranks the tokens; each pruning block keeps the top
``prune_ratio`` of them, merges the rest into one representative token (score-weighted mean),
runs attention + MLP on [cls, kept, representative], and adds the representative's update to
every dropped token ("fast update"). The last stage-3 block average-pools the scores for stage 4.

The official code keeps the scores and token order in module globals (not re-entrant); here
they travel in an explicit :class:`PruneState` through the forward pass. ``forward`` returns
``head(mean_tokens)`` (B, K) in training and eval mode. ``forward_train`` returns
``TrainOutput(head(mean_tokens), head_cls(LN(cls_token)))`` with the class-token logits shaped
(B, 1, K), i.e. a one-token auxiliary output, so the shared token-labeling loss applies (the
official recipe averages the two losses: use an aux weight of 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.attention.relation import GlobalMHRA
from vitlab.layers import DropPath, Mlp
from vitlab.models.base import TrainOutput, VitlabModel, check_image_input, default_pretrained_cfg
from vitlab.models.features import feature_info_entry, feature_take_indices
from vitlab.models.registry import register_family, register_model
from vitlab.models.uniformer_blocks import (ConvBlock, ConvStemEmbed, PatchEmbed, default_norm_layer,
                                            init_uniformer_weights, stochastic_depth_rates)


@dataclass
class PruneState:
    """Per-forward token-ranking state: global attention scores (B, N) and original token positions (B, N)."""
    scores: torch.Tensor | None
    positions: torch.Tensor


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, C), index (B, M) -> (B, M, C)."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class ScoredAttention(GlobalMHRA):
    """MHSA that also returns the head-averaged attention of the first (class) token to all tokens."""

    def forward(self, x: torch.Tensor):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        cls_row = ((q[:, :, :1] @ k.transpose(-2, -1)) * self.scale).softmax(-1)[:, :, 0].mean(1)  # (B, N)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0,
                                             scale=self.scale)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C))), cls_row


class PruningAttnBlock(nn.Module):
    """EvoSABlock: a global-MHRA block with a class token and, for ``prune_ratio < 1``, token pruning."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer=None, prune_ratio: float = 1.0, trade_off: float = 0.0, downsample: bool = False,
                 layer_scale: bool = False, init_value: float = 1e-6):
        super().__init__()
        norm_layer = default_norm_layer(norm_layer)
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = norm_layer(dim)
        self.attn = ScoredAttention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                                    proj_drop=drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)
        self.prune_ratio, self.trade_off, self.downsample = prune_ratio, trade_off, downsample
        self.layer_scale = layer_scale
        if layer_scale:
            self.gamma_1 = nn.Parameter(init_value * torch.ones(dim))
            self.gamma_2 = nn.Parameter(init_value * torch.ones(dim))
            if prune_ratio != 1:
                self.gamma_3 = nn.Parameter(init_value * torch.ones(dim))

    def _scale(self, name: str, y: torch.Tensor) -> torch.Tensor:
        return getattr(self, name) * y if self.layer_scale else y

    def _update_scores(self, state: PruneState, cls_row: torch.Tensor, n_kept: int | None) -> None:
        t = self.trade_off
        if state.scores is None:
            state.scores = cls_row[:, 1:]
        elif n_kept is None:
            state.scores = (1 - t) * state.scores + t * cls_row[:, 1:]
        else:  # only the kept tokens (between the class and the representative token) are re-scored
            kept = (1 - t) * state.scores[:, :n_kept] + t * cls_row[:, 1:-1]
            state.scores = torch.cat([kept, state.scores[:, n_kept:]], dim=1)

    def forward(self, cls_token: torch.Tensor, x: torch.Tensor, state: PruneState):
        x = x + self.pos_embed(x)
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        if self.prune_ratio == 1:
            seq = torch.cat([cls_token, tokens], dim=1)
            y, cls_row = self.attn(self.norm1(seq))
            self._update_scores(state, cls_row, None)
            seq = seq + self.drop_path(self._scale("gamma_1", y))
            seq = seq + self.drop_path(self._scale("gamma_2", self.mlp(self.norm2(seq))))
            return seq[:, :1], seq[:, 1:].transpose(1, 2).reshape(B, C, H, W)

        N = tokens.shape[1]
        n_kept = int(N * self.prune_ratio)
        order = torch.argsort(state.scores, dim=1, descending=True)
        tokens = gather_tokens(tokens, order)
        state.scores = torch.gather(state.scores, 1, order)
        state.positions = torch.gather(state.positions, 1, order)
        kept, dropped = tokens[:, :n_kept], tokens[:, n_kept:]
        weights = state.scores[:, n_kept:]
        representative = (weights / weights.sum(1, keepdim=True)).unsqueeze(-1).mul(dropped).sum(1, keepdim=True)

        seq = torch.cat([cls_token, kept, representative], dim=1)
        y, cls_row = self.attn(self.norm1(seq))
        self._update_scores(state, cls_row, n_kept)
        fast = y[:, -1:]
        seq = seq + self.drop_path(self._scale("gamma_1", y))
        y = self.mlp(self.norm2(seq))
        fast = fast + y[:, -1:]
        seq = seq + self.drop_path(self._scale("gamma_2", y))
        dropped = dropped + self._scale("gamma_3", fast).expand(-1, N - n_kept, -1)

        tokens = torch.cat([seq[:, 1:-1], dropped], dim=1)
        old_total = state.scores.sum(1, keepdim=True)
        restore = torch.argsort(state.positions, dim=1)
        tokens = gather_tokens(tokens, restore)
        state.scores = torch.gather(state.scores, 1, restore)
        state.positions = torch.gather(state.positions, 1, restore)
        if self.downsample:  # scores for the next (half-resolution) stage, renormalised to the same total
            pooled = F.avg_pool2d(state.scores.reshape(B, 1, H, W), 2, 2).flatten(1)
            state.scores = pooled * (old_total / pooled.sum(1, keepdim=True))
        return seq[:, :1], tokens.transpose(1, 2).reshape(B, C, H, W)


class UniFormerLight(VitlabModel):
    """Light UniFormer with the official ``UniFormer_Light.__init__`` arguments (+ ``img_size``, ``layer_scale``)."""

    classifier_names = ("head", "head_cls")

    def __init__(self, depth=(3, 4, 8, 3), in_chans: int = 3, num_classes: int = 1000, embed_dim=(64, 128, 320, 512),
                 head_dim: int = 64, mlp_ratio=(4.0, 4.0, 4.0, 4.0), qkv_bias: bool = True,
                 qk_scale: float | None = None, representation_size: int | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_layer=None, conv_stem: bool = False,
                 prune_ratio=None, trade_off=None, img_size: int = 224, layer_scale: bool = False,
                 init_value: float = 1e-6):
        super().__init__()
        depth, embed_dim = list(depth), list(embed_dim)
        mlp_ratio = list(mlp_ratio) if isinstance(mlp_ratio, (list, tuple)) else [mlp_ratio] * 4
        prune_ratio = prune_ratio or [[], [], [1] + [0.5] * (depth[2] - 1), [0.5] * depth[3]]
        trade_off = trade_off or [[], [], [1] + [0.5] * (depth[2] - 1), [0.5] * depth[3]]
        for name, val in (("prune_ratio", prune_ratio), ("trade_off", trade_off)):
            if len(val[2]) != depth[2] or len(val[3]) != depth[3]:
                raise ValueError(f"{name} needs one entry per stage-3/4 block ({depth[2]}, {depth[3]}), got {val}")
        if prune_ratio[2][0] != 1:
            raise ValueError("the first stage-3 block must not prune (prune_ratio[2][0] == 1): it initialises the "
                             "token scores")
        if depth[2] > 1 and prune_ratio[2][-1] == 1:
            raise ValueError("the last stage-3 block must prune (prune_ratio[2][-1] < 1): it pools the token scores "
                             "for stage 4")
        if representation_size:
            raise ValueError("representation_size is not supported; leave it None")
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, embed_dim[-1]
        norm_layer = default_norm_layer(norm_layer)

        self.patch_embed1 = ConvStemEmbed(in_chans, embed_dim[0], first=True) if conv_stem else \
            PatchEmbed(in_chans, embed_dim[0], 4, 4)
        for i in range(1, 4):
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(embed_dim[i - 1], embed_dim[i], 2, 2))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim[2]))
        self.cls_upsample = nn.Linear(embed_dim[2], embed_dim[3])
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = stochastic_depth_rates(drop_path_rate, depth)
        for s in range(2):
            setattr(self, f"blocks{s + 1}", nn.ModuleList([
                ConvBlock(embed_dim[s], mlp_ratio[s], drop_rate, dpr[s][i], layer_scale=layer_scale,
                          init_value=init_value) for i in range(depth[s])]))
        for s in range(2, 4):
            setattr(self, f"blocks{s + 1}", nn.ModuleList([
                PruningAttnBlock(embed_dim[s], embed_dim[s] // head_dim, mlp_ratio[s], qkv_bias, qk_scale, drop_rate,
                                 attn_drop_rate, dpr[s][i], norm_layer, prune_ratio[s][i], trade_off[s][i],
                                 downsample=(s == 2 and i == depth[2] - 1), layer_scale=layer_scale,
                                 init_value=init_value) for i in range(depth[s])]))
        self.norm = nn.BatchNorm2d(embed_dim[-1])
        self.norm_cls = nn.LayerNorm(embed_dim[-1])
        self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.head_cls = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_uniformer_weights)
        self.feature_info = [feature_info_entry(embed_dim[s], 4 * 2 ** s, f"blocks{s + 1}") for s in range(4)]
        self.pretrained_cfg = default_pretrained_cfg(img_size, num_classes, crop_pct=0.875,
                                                     first_conv="patch_embed1.proj", classifier="head")

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"cls_token"}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        for name in ("head", "head_cls"):
            layer = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
            init_uniformer_weights(layer)
            setattr(self, name, layer)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def _positions(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[2] * x.shape[3]
        return torch.arange(n, device=x.device).unsqueeze(0).expand(x.shape[0], -1)

    def _stages(self, x: torch.Tensor, collect: set[int] | None = None):
        check_image_input(x, self.in_chans, "UniFormerLight", dtype=self._weight_dtype())
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"UniFormerLight needs inputs of at least 32x32, got {x.shape[-2]}x{x.shape[-1]}")
        feats = []
        x = self.pos_drop(self.patch_embed1(x))
        for blk in self.blocks1:
            x = blk(x)
        if collect is not None and 0 in collect:
            feats.append(x)
        x = self.patch_embed2(x)
        for blk in self.blocks2:
            x = blk(x)
        if collect is not None and 1 in collect:
            feats.append(x)
        x = self.patch_embed3(x)
        cls_token = self.cls_token.repeat(x.shape[0], 1, 1)  # a copy, not a view (module hooks need grad_fn)
        state = PruneState(None, self._positions(x))
        for blk in self.blocks3:
            cls_token, x = blk(cls_token, x, state)
        if collect is not None and 2 in collect:
            feats.append(x)
        cls_token = self.cls_upsample(cls_token)
        x = self.patch_embed4(x)
        state.positions = self._positions(x)
        for blk in self.blocks4:
            cls_token, x = blk(cls_token, x, state)
        if collect is not None and 3 in collect:
            feats.append(x)
        return cls_token, x, feats

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H/32, W/32) map of the last stage's patch tokens after the final BatchNorm ``norm``
        (the class token is not part of it). For sizes not divisible by 32 the convolutional stem
        rounds its stride-4 grid up and each stride-2 patch embedding rounds down."""
        return self.norm(self._stages(x)[1])

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.flatten(2).mean(-1)
        return pooled if pre_logits else self.head(pooled)

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """``TrainOutput(head(mean_tokens), head_cls(norm_cls(cls_token)))``: the logits (B, K) of
        :meth:`forward` and the class-token logits as a one-token aux output (B, 1, K)."""
        cls_token, x, _ = self._stages(x)
        return TrainOutput(self.forward_head(self.norm(x)), self.head_cls(self.norm_cls(cls_token)))

    def forward_intermediates(self, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
        take = feature_take_indices(4, indices)
        return self._stages(x, set(take))[2]


register_family("uniformer_light", UniFormerLight,
                doc="Light UniFormer (XXS/XS: hourglass token pruning) with the official constructor arguments")


@register_model(family="uniformer_light")
def uniformer_xxs(**kwargs):
    """UniFormer-XXS (light, conv stem, token pruning): 10.2M params, 0.6-0.9 GMACs at 128-192 px."""
    return UniFormerLight(**{**dict(
        depth=[2, 5, 8, 2], conv_stem=True, embed_dim=[56, 112, 224, 448], head_dim=28, mlp_ratio=[3, 3, 3, 3],
        qkv_bias=True, prune_ratio=[[], [], [1] + [0.5] * 7, [0.5] * 2],
        trade_off=[[], [], [1] + [0.5] * 7, [0.5] * 2]), **kwargs})


@register_model(family="uniformer_light")
def uniformer_xs(**kwargs):
    """UniFormer-XS (light, conv stem, token pruning): 16.5M params, 1.0-2.0 GMACs at 192-224 px."""
    return UniFormerLight(**{**dict(
        depth=[3, 5, 9, 3], conv_stem=True, embed_dim=[64, 128, 256, 512], head_dim=32, mlp_ratio=[3, 3, 3, 3],
        qkv_bias=True, prune_ratio=[[], [], [1] + [0.5] * 8, [0.5] * 3],
        trade_off=[[], [], [1] + [0.5] * 8, [0.5] * 3]), **kwargs})

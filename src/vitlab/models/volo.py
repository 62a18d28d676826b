"""VOLO: Vision Outlooker for Visual Recognition (Yuan et al., arXiv 2106.13112; official code sail-sg/volo).

Stage 1 encodes fine-grained 1/8-resolution tokens with Outlookers (outlook attention + MLP);
a 2x2 stride-2 convolution downsamples to 1/16, an NHWC absolute position embedding is added,
and plain transformer blocks aggregate globally; two CaiT class-attention blocks read out the
class token. With token labeling (``return_dense=True``) an auxiliary head classifies every
token; ``forward`` returns the released models' output ``head(cls) + 0.5 * max_tokens(aux_head(tokens))``
in every mode, and ``forward_train`` the separate class and token logits for the loss (with
MixToken when ``mix_token=True`` and training).

Tokens are NHWC (B, H, W, C) inside the network. Parameter names follow the official code, so
official ``.pth.tar`` checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vitlab.attention.class_attention import ClassAttention
from vitlab.attention.global_ import Attention
from vitlab.attention.outlook import OutlookAttention
from vitlab.layers import DropPath, Mlp, resize_pos_embed_nhwc, trunc_normal_, init_weights_trunc_normal
from vitlab.models.base import TrainOutput, VitlabModel, check_image_input, default_pretrained_cfg
from vitlab.models.features import feature_info_entry, feature_take_indices
from vitlab.models.registry import register_family, register_model

VOLO_LN_EPS = 1e-5  # the official blocks build nn.LayerNorm(dim) whatever norm_layer says


class Outlooker(nn.Module):
    """x += OutlookAttn(LN(x)); x += MLP(LN(x)). The official model never gives these drop-path."""

    def __init__(self, dim: int, kernel_size: int, padding: int, stride: int = 1, num_heads: int = 1,
                 mlp_ratio: float = 3.0, attn_drop: float = 0.0, drop_path: float = 0.0, qkv_bias: bool = False,
                 qk_scale: float | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VOLO_LN_EPS)
        self.attn = OutlookAttention(dim, num_heads, kernel_size, padding, stride, qkv_bias, qk_scale, attn_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=VOLO_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block with global MHSA on NHWC tokens (the official ``Transformer``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 qk_scale: float | None = None, attn_drop: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VOLO_LN_EPS)
        self.attn = Attention(dim, num_heads, qkv_bias, qk_scale, attn_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=VOLO_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ClassBlock(nn.Module):
    """CaiT class-attention block: updates only the class token (its MLP runs on the class token alone)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int | None = None, mlp_ratio: float = 4.0,
                 qkv_bias: bool = False, qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0,
                 drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=VOLO_LN_EPS)
        self.attn = ClassAttention(dim, num_heads, head_dim, qkv_bias, qk_scale, attn_drop, drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=VOLO_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cls = x[:, :1]
        cls = cls + self.drop_path(self.attn(self.norm1(x)))
        cls = cls + self.drop_path(self.mlp(self.norm2(cls)))
        return torch.cat([cls, x[:, 1:]], dim=1)


class ConvStem(nn.Module):
    """conv7x7 s2 -> BN -> ReLU -> (conv3x3 -> BN -> ReLU) x2 (no conv bias), then a k=s=patch/2 projection."""

    def __init__(self, in_chans: int = 3, hidden_dim: int = 64, embed_dim: int = 384, patch_size: int = 8):
        super().__init__()
        if patch_size not in (4, 8, 16):
            raise ValueError(f"VOLO patch_size must be 4, 8 or 16, got {patch_size}")
        self.conv = nn.Sequential(
            nn.Conv2d(in_chans, hidden_dim, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden_dim, hidden_dim, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(hidden_dim),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Conv2d(hidden_dim, embed_dim, kernel_size=patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x))  # NCHW


class Downsample(nn.Module):
    """2x2 stride-2 convolution between the outlooker and transformer stages, NHWC in and out."""

    def __init__(self, in_dim: int, out_dim: int, patch_size: int = 2):
        super().__init__()
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def mix_token_box(grid_hw: tuple[int, int], lam: float, scale: int, generator: torch.Generator | None = None):
    """Random box (on the grid downsampled by ``scale``) covering ~(1-lam) of it, as in token labeling's MixToken.

    Returns (y1, x1, y2, x2), end-exclusive, on the coarse (H // scale, W // scale) grid.
    """
    H, W = grid_hw[0] // scale, grid_hw[1] // scale
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * cut), int(W * cut)
    cy = int(torch.randint(H, (1,), generator=generator))
    cx = int(torch.randint(W, (1,), generator=generator))
    clamp = lambda v, hi: max(0, min(hi, v))  # noqa: E731
    return clamp(cy - cut_h // 2, H), clamp(cx - cut_w // 2, W), clamp(cy + cut_h // 2, H), clamp(cx + cut_w // 2, W)


class VOLO(VitlabModel):
    """Vision Outlooker. Arguments are the official ``VOLO.__init__`` ones, plus ``dynamic_img_size``.

    ``layers``/``embed_dims``/``num_heads``/``mlp_ratios``/``downsamples``/``outlook_attention`` give
    one entry per block group; ``post_layers=['ca', 'ca']`` adds the class-attention blocks.
    ``return_dense`` adds the token-labeling ``aux_head``: ``forward`` then returns
    ``head(cls) + 0.5 * max_tokens(aux_head(tokens))`` (B, K) in training and eval mode alike, and
    :meth:`forward_train` a :class:`~vitlab.models.base.TrainOutput` with the class logits, the
    aux logits (B, N, K) and, with ``mix_token=True`` in training mode, the MixToken box.
    ``dynamic_img_size=True`` interpolates the position embedding for inputs of another size;
    otherwise such inputs raise an error naming the size the model was built for.
    """

    classifier_names = ("head", "aux_head")

    def __init__(self, layers, img_size: int = 224, in_chans: int = 3, num_classes: int = 1000, patch_size: int = 8,
                 stem_hidden_dim: int = 64, embed_dims=None, num_heads=None, downsamples=None,
                 outlook_attention=None, mlp_ratios=None, qkv_bias: bool = False, qk_scale: float | None = None,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_layer=nn.LayerNorm, post_layers=None, return_mean: bool = False, return_dense: bool = True,
                 mix_token: bool = False, pooling_scale: int = 2, out_kernel: int = 3, out_stride: int = 2,
                 out_padding: int = 1, dynamic_img_size: bool = False):
        super().__init__()
        n = len(layers)
        for arg, val in (("embed_dims", embed_dims), ("num_heads", num_heads), ("downsamples", downsamples),
                         ("outlook_attention", outlook_attention), ("mlp_ratios", mlp_ratios)):
            if val is None or len(val) != n:
                raise ValueError(f"VOLO needs {arg} with one entry per block group ({n}), got {val}")
        if return_dense and return_mean:
            raise ValueError("VOLO cannot use return_dense and return_mean together")
        if mix_token and not return_dense:
            raise ValueError("mix_token=True needs return_dense=True (the aux head un-mixes the tokens)")
        if post_layers is not None and any(p != "ca" for p in post_layers):
            raise ValueError(f"post_layers entries must be 'ca' (class attention), got {post_layers}")

        self.num_classes = num_classes
        self.in_chans = in_chans
        self.img_size = img_size
        self.patch_size = patch_size
        self.pooling_scale = pooling_scale
        self.return_mean, self.return_dense, self.mix_token = return_mean, return_dense, mix_token
        self.dynamic_img_size = dynamic_img_size
        self.num_features = embed_dims[-1]

        self.patch_embed = ConvStem(in_chans, stem_hidden_dim, embed_dims[0], patch_size)
        grid = img_size // patch_size // pooling_scale
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dims[-1]))
        self.pos_drop = nn.Dropout(drop_rate)

        total = sum(layers)
        network, self._stage_slots, feature_info = [], [], []
        reduction = patch_size
        for i in range(n):
            if outlook_attention[i]:
                blocks = [Outlooker(embed_dims[i], out_kernel, out_padding, out_stride, num_heads[i], mlp_ratios[i],
                                    attn_drop_rate, 0.0, qkv_bias, qk_scale) for _ in range(layers[i])]
            else:
                first = sum(layers[:i])
                blocks = [TransformerBlock(embed_dims[i], num_heads[i], mlp_ratios[i], qkv_bias, qk_scale,
                                           attn_drop_rate, drop_path_rate * (first + j) / max(total - 1, 1))
                          for j in range(layers[i])]
            self._stage_slots.append(len(network))
            feature_info.append(feature_info_entry(embed_dims[i], reduction, f"network.{len(network)}"))
            network.append(nn.Sequential(*blocks))
            if downsamples[i]:
                network.append(Downsample(embed_dims[i], embed_dims[i + 1], 2))
                reduction *= 2
        self.network = nn.ModuleList(network)
        self.feature_info = feature_info

        self.post_network = None
        if post_layers is not None:
            self.post_network = nn.ModuleList([
                ClassBlock(embed_dims[-1], num_heads[-1], mlp_ratio=mlp_ratios[-1], qkv_bias=qkv_bias,
                           qk_scale=qk_scale, attn_drop=attn_drop_rate, drop_path=0.0) for _ in post_layers])
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims[-1]))
            trunc_normal_(self.cls_token, std=0.02)
        if return_dense:
            self.aux_head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.norm = norm_layer(embed_dims[-1])
        self.head = nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()

        trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_weights_trunc_normal)
        self.pretrained_cfg = default_pretrained_cfg(img_size, num_classes, crop_pct=0.96,
                                                     first_conv="patch_embed.proj", classifier="head")

    # --- API ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (and the aux head) with fresh ones for ``num_classes`` (0 = identity)."""
        self.num_classes = num_classes
        make = lambda: nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()  # noqa: E731
        self.head = make()
        if self.return_dense:
            self.aux_head = make()
        for m in (self.head, getattr(self, "aux_head", None)):
            if isinstance(m, nn.Linear):
                init_weights_trunc_normal(m)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        check_image_input(x, self.in_chans, "VOLO", dtype=self._weight_dtype())
        min_size = self.patch_size * self.pooling_scale
        if min(x.shape[-2:]) < min_size:
            raise ValueError(f"VOLO needs inputs of at least {min_size}x{min_size} pixels, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        return self.patch_embed(x).permute(0, 2, 3, 1)  # NHWC

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        pos = self.pos_embed
        if tuple(x.shape[1:3]) != tuple(pos.shape[1:3]):
            if not self.dynamic_img_size:
                raise ValueError(f"this VOLO was built for {self.img_size}x{self.img_size} inputs (a {pos.shape[1]}x"
                                 f"{pos.shape[2]} token grid after downsampling) but got a {x.shape[1]}x{x.shape[2]} "
                                 f"grid; build it with img_size=<your size> (checkpoints are resized on load) or "
                                 f"with dynamic_img_size=True to interpolate the position embedding per input")
            pos = resize_pos_embed_nhwc(pos, tuple(x.shape[1:3]))
        return self.pos_drop(x + pos)

    def _run_network(self, x: torch.Tensor, collect: set[int] | None = None):
        """Run the block groups on NHWC tokens; optionally collect NCHW outputs of some stages."""
        feats = []
        for idx, block in enumerate(self.network):
            if idx == 2:  # the official model adds the position embedding at network index 2
                x = self._pos_embed(x)
            x = self._run_blocks(block, x) if isinstance(block, nn.Sequential) else block(x)
            if collect is not None and idx in collect:
                feats.append(x.permute(0, 3, 1, 2))
        return x, feats

    def _mix_tokens(self, x: torch.Tensor):
        lam = float(torch.distributions.Beta(1.0, 1.0).sample())
        box = mix_token_box(tuple(x.shape[1:3]), lam, self.pooling_scale)
        s = self.pooling_scale
        y1, x1, y2, x2 = (c * s for c in box)
        mixed = x.clone()
        mixed[:, y1:y2, x1:x2] = x.flip(0)[:, y1:y2, x1:x2]
        return mixed, box

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self._run_network(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        if self.post_network is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
            for block in self.post_network:
                x = block(x)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 + N, C) normalised tokens (after the final norm), class token first, then the N = h * w
        tokens of the last block group's grid in row-major order: stride ``patch_size`` after the stem,
        x2 per ``downsamples`` entry, so h = H / 16, w = W / 16 for the released models. Without
        ``post_layers`` there is no class token: (B, N, C)."""
        return self._tokens(self._embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, K) from :meth:`forward_features` tokens; with the aux head merged as
        ``head(cls) + 0.5 * max_tokens(aux_head(tokens))`` (the same in training and eval mode)."""
        if self.return_mean:
            x = x.mean(1)
            return x if pre_logits else self.head(x)
        if pre_logits:
            return x[:, 0]
        x_cls = self.head(x[:, 0])
        if not self.return_dense:
            return x_cls
        return x_cls + 0.5 * self.aux_head(x[:, 1:]).max(1).values

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """Outputs for the token-labeling loss: ``TrainOutput(head(cls), aux_head(tokens), box)``.

        ``logits`` (B, K) is the class head alone; ``aux_logits`` (B, N, K) the aux head on the N
        patch tokens. With ``mix_token=True`` in training mode a random box of the token grid is
        swapped with the batch-flipped images' tokens (MixToken) before the transformer stages, the
        aux logits are swapped back so each row's tokens are its own image's, and ``mix_box``
        is that box (y1, x1, y2, x2) on the aux token grid. Without an aux head: ``TrainOutput(self(x))``.
        """
        if not self.return_dense or self.return_mean:
            return TrainOutput(self(x))
        x = self._embed(x)
        box = None
        if self.mix_token and self.training:
            x, box = self._mix_tokens(x)
        tokens = self._tokens(x)
        x_cls, x_aux = self.head(tokens[:, 0]), self.aux_head(tokens[:, 1:])
        if box is not None:
            # undo the mix on the aux predictions so each token's logits align with its own image
            h, w = x.shape[1] // self.pooling_scale, x.shape[2] // self.pooling_scale
            x_aux = x_aux.reshape(x_aux.shape[0], h, w, -1)
            y1, x1, y2, x2 = box
            unmixed = x_aux.clone()
            unmixed[:, y1:y2, x1:x2] = x_aux.flip(0)[:, y1:y2, x1:x2]
            x_aux = unmixed.reshape(x_aux.shape[0], h * w, -1)
        return TrainOutput(x_cls, x_aux, box)

    def forward_intermediates(self, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
        """NCHW outputs of the block groups (stride 8 for the outlooker group, 16 after it)."""
        take = feature_take_indices(len(self._stage_slots), indices)
        _, feats = self._run_network(self._embed(x), {self._stage_slots[i] for i in take})
        return feats

    def checkpoint_filter(self, state_dict: dict, notes: list[str]) -> dict:
        """Resize the NHWC position embedding (bicubic) when the checkpoint was trained at another size."""
        pos = state_dict.get("pos_embed")
        if pos is not None and pos.ndim == 4 and pos.shape != self.pos_embed.shape \
                and pos.shape[-1] == self.pos_embed.shape[-1]:
            state_dict = dict(state_dict)
            state_dict["pos_embed"] = resize_pos_embed_nhwc(pos, tuple(self.pos_embed.shape[1:3]))
            notes.append(f"resized pos_embed {tuple(pos.shape)} -> {tuple(self.pos_embed.shape)} (bicubic)")
        return state_dict


register_family("volo", VOLO, doc="VOLO with the official constructor arguments (layers, embed_dims, ...)")

_D = dict(downsamples=[True, False, False, False], outlook_attention=[True, False, False, False],
          post_layers=["ca", "ca"])
VOLO_ARCHS = {
    "d1": dict(layers=[4, 4, 8, 2], embed_dims=[192, 384, 384, 384], num_heads=[6, 12, 12, 12], mlp_ratios=[3] * 4),
    "d2": dict(layers=[6, 4, 10, 4], embed_dims=[256, 512, 512, 512], num_heads=[8, 16, 16, 16], mlp_ratios=[3] * 4),
    "d3": dict(layers=[8, 8, 16, 4], embed_dims=[256, 512, 512, 512], num_heads=[8, 16, 16, 16], mlp_ratios=[3] * 4),
    "d4": dict(layers=[8, 8, 16, 4], embed_dims=[384, 768, 768, 768], num_heads=[12, 16, 16, 16], mlp_ratios=[3] * 4),
    "d5": dict(layers=[12, 12, 20, 4], embed_dims=[384, 768, 768, 768], num_heads=[12, 16, 16, 16],
               mlp_ratios=[4] * 4, stem_hidden_dim=128),
    "micro": dict(layers=[2, 1, 1, 1], embed_dims=[32, 64, 64, 64], num_heads=[2, 4, 4, 4], mlp_ratios=[3] * 4,
                 stem_hidden_dim=16),
}


def _volo(arch: str, img_size: int, **kwargs) -> VOLO:
    return VOLO(**{**_D, **VOLO_ARCHS[arch], "img_size": img_size, **kwargs})


@register_model(pretrained_cfg={"crop_pct": 0.96}, aliases=("volo_d1_224",))
def volo_d1(**kwargs):
    """VOLO-D1 @224: 26.6M params, 6.8 GMACs, 84.2% top-1."""
    return _volo("d1", kwargs.pop("img_size", 224), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.0})
def volo_d1_384(**kwargs):
    """VOLO-D1 @384: 26.8M params, 85.2% top-1."""
    return _volo("d1", kwargs.pop("img_size", 384), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.96}, aliases=("volo_d2_224",))
def volo_d2(**kwargs):
    """VOLO-D2 @224: 58.7M params, 14.1 GMACs, 85.2% top-1."""
    return _volo("d2", kwargs.pop("img_size", 224), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.0})
def volo_d2_384(**kwargs):
    """VOLO-D2 @384: 58.9M params, 86.0% top-1."""
    return _volo("d2", kwargs.pop("img_size", 384), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.96}, aliases=("volo_d3_224",))
def volo_d3(**kwargs):
    """VOLO-D3 @224: 86.3M params, 20.6 GMACs, 85.4% top-1."""
    return _volo("d3", kwargs.pop("img_size", 224), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.0})
def volo_d3_448(**kwargs):
    """VOLO-D3 @448: 86.6M params, 86.3% top-1."""
    return _volo("d3", kwargs.pop("img_size", 448), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.15}, aliases=("volo_d4_224",))
def volo_d4(**kwargs):
    """VOLO-D4 @224: 193M params, 43.8 GMACs, 85.7% top-1."""
    return _volo("d4", kwargs.pop("img_size", 224), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.15})
def volo_d4_448(**kwargs):
    """VOLO-D4 @448: 193.4M params, 86.8% top-1."""
    return _volo("d4", kwargs.pop("img_size", 448), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.15}, aliases=("volo_d5_224",))
def volo_d5(**kwargs):
    """VOLO-D5 @224: 296M params, 69.0 GMACs, 86.1% top-1."""
    return _volo("d5", kwargs.pop("img_size", 224), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.15})
def volo_d5_448(**kwargs):
    """VOLO-D5 @448: 296M params, 87.0% top-1."""
    return _volo("d5", kwargs.pop("img_size", 448), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 1.15})
def volo_d5_512(**kwargs):
    """VOLO-D5 @512: 296M params, 87.1% top-1."""
    return _volo("d5", kwargs.pop("img_size", 512), **kwargs)


@register_model(pretrained_cfg={"crop_pct": 0.96})
def volo_micro(**kwargs):
    """Micro VOLO for tests and CPU demos (0.39M params, 64 px): layers 2,1,1,1, dims 32/64."""
    return _volo("micro", kwargs.pop("img_size", 64), **kwargs)

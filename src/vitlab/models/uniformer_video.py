"""UniFormer for video (Li et al., arXiv 2201.09450 / 2201.04676; official code Sense-X/UniFormer, SlowFast).

The image architecture lifted to 3-D: the first patch embedding is a (3,4,4) convolution with
temporal stride 2 (T -> T/2), later ones (1,2,2) (or (3,2,2) with ``std=True``); dynamic position
encoding is a depth-wise 3x3x3 convolution, local MHRA a depth-wise 5x5x5 one, and global MHRA
attends jointly over all T*H*W tokens (``split=True``: divided time-then-space attention).
Head: BatchNorm3d -> mean over T*H*W -> linear.

``load_checkpoint(model, image_checkpoint)`` inflates 2-D ImageNet weights into the 3-D model
by repeating each kernel over time and dividing by T, as the official training recipe does.
"""
from __future__ import annotations

import torch
from torch import nn

from vitlab.attention.relation import GlobalMHRA
from vitlab.layers import DropPath, Mlp
from vitlab.models.base import VitlabModel, check_batch_and_dtype
from vitlab.models.features import feature_info_entry, feature_take_indices
from vitlab.models.registry import register_family, register_model
from vitlab.models.uniformer_blocks import (AttnBlock, ConvBlock, PatchEmbed, check_stage_config, default_norm_layer,
                                            init_uniformer_weights, stochastic_depth_rates)

KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


class SplitAttnBlock(nn.Module):
    """Divided space-time block (``split=True``): temporal MHSA per position, then spatial MHSA per frame, then MLP.

    The temporal attention starts as an identity-like residual (qkv zero, proj weight one), as in the official init.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, drop: float = 0.0, attn_drop: float = 0.0, drop_path: float = 0.0,
                 norm_layer=None):
        super().__init__()
        norm_layer = default_norm_layer(norm_layer)
        mhra = dict(qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop, proj_drop=drop)
        self.pos_embed = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.t_norm = norm_layer(dim)
        self.t_attn = GlobalMHRA(dim, num_heads, **mhra)
        self.norm1 = norm_layer(dim)
        self.attn = GlobalMHRA(dim, num_heads, **mhra)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=drop)

    def init_temporal_identity(self) -> None:
        nn.init.zeros_(self.t_attn.qkv.weight)
        if self.t_attn.qkv.bias is not None:
            nn.init.zeros_(self.t_attn.qkv.bias)
        nn.init.ones_(self.t_attn.proj.weight)
        nn.init.zeros_(self.t_attn.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_embed(x)
        B, C, T, H, W = x.shape
        seq = x.view(B, C, T, H * W).permute(0, 3, 2, 1).reshape(B * H * W, T, C)  # per-position time series
        seq = seq + self.drop_path(self.t_attn(self.t_norm(seq)))
        seq = seq.view(B, H * W, T, C).transpose(1, 2).reshape(B * T, H * W, C)  # per-frame tokens
        residual = x.view(B, C, T, H * W).permute(0, 2, 3, 1).reshape(B * T, H * W, C)
        seq = residual + self.drop_path(self.attn(self.norm1(seq)))
        seq = seq.view(B, T * H * W, C)
        seq = seq + self.drop_path(self.mlp(self.norm2(seq)))
        return seq.transpose(1, 2).reshape(B, C, T, H, W)


def inflate_2d_weight(weight: torch.Tensor, time_dim: int) -> torch.Tensor:
    """(O, I, kh, kw) -> (O, I, T, kh, kw): repeat over time and divide by T (a static video gives the 2-D output)."""
    return weight.unsqueeze(2).repeat(1, 1, time_dim, 1, 1) / time_dim


class UniFormerVideo(VitlabModel):
    """Video UniFormer taking (B, 3, T, H, W) clips (or a one-element list of them, the SlowFast convention).

    Arguments are the image family's (depth, embed_dim, head_dim, mlp_ratio, qkv_bias, drop_path_rate,
    img_size, num_classes, ...) plus the video config's ``std`` and ``split``; ``num_frames`` is
    bookkeeping for ``pretrained_cfg`` (any T works).
    """

    classifier_names = ("head",)

    def __init__(self, depth=(3, 4, 8, 3), img_size: int = 224, in_chans: int = 3, num_classes: int = 400,
                 embed_dim=(64, 128, 320, 512), head_dim: int = 64, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, representation_size: int | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_layer=None, std: bool = False,
                 split: bool = False, layer_scale: bool = False, init_value: float = 1e-6,
                 use_checkpoint: bool = False, checkpoint_num=None, num_frames: int = 16):
        super().__init__()
        depth, embed_dim = list(depth), list(embed_dim)
        check_stage_config(depth, embed_dim, head_dim, representation_size)
        self.depth, self.embed_dim, self.in_chans = depth, embed_dim, in_chans
        self.num_classes, self.num_features, self.split = num_classes, embed_dim[-1], split
        norm_layer = default_norm_layer(norm_layer)

        self.patch_embed1 = PatchEmbed(in_chans, embed_dim[0], (3, 4, 4), (2, 4, 4), (1, 0, 0), dims=3)
        later = dict(kernel_size=(3, 2, 2), stride=(1, 2, 2), padding=(1, 0, 0)) if std else \
            dict(kernel_size=(1, 2, 2), stride=(1, 2, 2), padding=0)
        for i in range(1, 4):
            setattr(self, f"patch_embed{i + 1}", PatchEmbed(embed_dim[i - 1], embed_dim[i], dims=3, **later))
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = stochastic_depth_rates(drop_path_rate, depth)
        num_heads = [d // head_dim for d in embed_dim]
        for s in range(2):
            setattr(self, f"blocks{s + 1}", nn.ModuleList([
                ConvBlock(embed_dim[s], mlp_ratio, drop_rate, dpr[s][i], dims=3, layer_scale=layer_scale,
                          init_value=init_value) for i in range(depth[s])]))
        for s in range(2, 4):
            if split:
                blocks = [SplitAttnBlock(embed_dim[s], num_heads[s], mlp_ratio, qkv_bias, qk_scale, drop_rate,
                                         attn_drop_rate, dpr[s][i], norm_layer) for i in range(depth[s])]
            else:
                blocks = [AttnBlock(embed_dim[s], num_heads[s], mlp_ratio, qkv_bias, qk_scale, drop_rate,
                                    attn_drop_rate, dpr[s][i], norm_layer=norm_layer, dims=3,
                                    layer_scale=layer_scale, init_value=init_value) for i in range(depth[s])]
            setattr(self, f"blocks{s + 1}", nn.ModuleList(blocks))
        self.norm = nn.BatchNorm3d(embed_dim[-1])
        self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_uniformer_weights)
        for m in self.modules():
            if isinstance(m, SplitAttnBlock):
                m.init_temporal_identity()
        if use_checkpoint:
            self.set_grad_checkpointing(True)

        self.feature_info = [feature_info_entry(embed_dim[s], 4 * 2 ** s, f"blocks{s + 1}") for s in range(4)]
        self.pretrained_cfg = {"input_size": (in_chans, num_frames, img_size, img_size), "num_frames": num_frames,
                               "mean": KINETICS_MEAN, "std": KINETICS_STD, "crop_pct": 1.0,
                               "interpolation": "bilinear", "num_classes": num_classes,
                               "first_conv": "patch_embed1.proj", "classifier": "head"}

    # --- API ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(("gamma_1", "gamma_2"))}

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        init_uniformer_weights(self.head)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def _clip(self, x) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            if len(x) != 1:
                raise ValueError(f"UniFormerVideo takes one pathway: a (B, {self.in_chans}, T, H, W) tensor or a "
                                 f"one-element list of it, got a list of {len(x)}")
            x = x[0]
        if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != self.in_chans:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"UniFormerVideo expects clips of shape (B, {self.in_chans}, T, H, W), got {got}")
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"UniFormerVideo downsamples space by 32: frames must be at least 32x32, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")
        check_batch_and_dtype(x, "UniFormerVideo", self._weight_dtype())
        return x

    def _stages(self, x: torch.Tensor, collect: set[int] | None = None):
        feats = []
        for s in range(4):
            x = getattr(self, f"patch_embed{s + 1}")(x)
            if s == 0:
                x = self.pos_drop(x)
            x = self._run_blocks(getattr(self, f"blocks{s + 1}"), x)
            if collect is not None and s in collect:
                feats.append(x)
        return x, feats

    def forward_features(self, x) -> torch.Tensor:
        """(B, C, T', H', W') map of the last stage after the final BatchNorm3d: T' = ceil(T / 2) (only the
        first patch embedding strides time), H' = H // 32, W' = W // 32."""
        x, _ = self._stages(self._clip(x))
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x.flatten(2).mean(-1)
        return pooled if pre_logits else self.head(pooled)

    def forward_intermediates(self, x, indices=None) -> list[torch.Tensor]:
        """(B, C, T', H // s, W // s) stage outputs (before the final norm) at spatial strides s = 4, 8, 16, 32,
        T' = ceil(T / 2)."""
        take = feature_take_indices(4, indices)
        return self._stages(self._clip(x), set(take))[1]

    def checkpoint_filter(self, state_dict: dict, notes: list[str]) -> dict:
        """Inflate 2-D image weights: every 4-D kernel whose 5-D model twin differs only in time is repeated / T."""
        own = self.state_dict()
        inflated, out = [], {}
        for k, v in state_dict.items():
            target = own.get(k)
            if target is not None and v.ndim == 4 and target.ndim == 5 \
                    and tuple(v.shape) == tuple(target.shape[:2]) + tuple(target.shape[3:]):
                out[k] = inflate_2d_weight(v, target.shape[2])
                inflated.append(f"{k} {tuple(v.shape)}->{tuple(target.shape)}")
            else:
                out[k] = v
        if inflated:
            more = f", ... (+{len(inflated) - 3} more)" if len(inflated) > 3 else ""
            notes.append(f"inflated {len(inflated)} 2-D image weights to 3-D (repeated over time, divided by T): "
                         + ", ".join(inflated[:3]) + more)
            aux = sorted(k for k in out if k.startswith("aux_head."))
            if aux:
                out = {k: v for k, v in out.items() if k not in aux}
                notes.append(f"dropped the image model's token-labeling head ({', '.join(aux)})")
            temporal = [k for k in own if (".t_attn." in k or ".t_norm." in k) and k not in out]
            if temporal:  # divided attention: image models have no temporal attention; keep its identity init
                for k in temporal:
                    out[k] = own[k].clone()
                notes.append(f"kept the initial values of {len(temporal)} temporal-attention keys the image "
                             f"checkpoint lacks (t_attn/t_norm: identity-like start)")
            head = [k for k in ("head.weight", "head.bias") if k in out and k in own and out[k].shape != own[k].shape]
            if head:  # ImageNet classes -> video classes: keep this model's fresh head, as the official recipe does
                n_ckpt = out[head[0]].shape[0]
                for k in head:
                    out[k] = own[k].clone()
                notes.append(f"kept the freshly initialised {', '.join(head)}: the image checkpoint has {n_ckpt} "
                             f"classes, this model {self.num_classes}")
        return out


register_family("uniformer_video", UniFormerVideo,
                doc="Video UniFormer (3-D) with the image family's arguments plus std and split")

VIDEO_ARCHS = {
    "small": dict(depth=[3, 4, 8, 3], embed_dim=[64, 128, 320, 512], head_dim=64, drop_path_rate=0.1),
    "base": dict(depth=[5, 8, 20, 7], embed_dim=[64, 128, 320, 512], head_dim=64, drop_path_rate=0.3),
    "micro": dict(depth=[1, 1, 1, 1], embed_dim=[16, 32, 64, 96], head_dim=16, img_size=64, num_frames=8,
                  num_classes=10),
}


def _video(arch: str, **kwargs) -> UniFormerVideo:
    return UniFormerVideo(**{"mlp_ratio": 4, "qkv_bias": True, **VIDEO_ARCHS[arch], **kwargs})


@register_model(family="uniformer_video", aliases=("uniformer_video_small_k400",))
def uniformer_video_small(**kwargs):
    """Video UniFormer-S (Kinetics-400 head): 21.4M params, 41.8 GMACs per 16x224^2 view, K400 80.8% (16x4)."""
    return _video("small", **kwargs)


@register_model(family="uniformer_video", aliases=("uniformer_video_base_k400",))
def uniformer_video_base(**kwargs):
    """Video UniFormer-B (Kinetics-400 head): 49.8M params, 96.7 GMACs per 16x224^2 view, K400 82.0% (16x4)."""
    return _video("base", **kwargs)


@register_model(family="uniformer_video")
def uniformer_video_micro(**kwargs):
    """Micro video UniFormer for tests and CPU training demos (8 frames at 64 px, depth 1/1/1/1, 10 classes)."""
    return _video("micro", **kwargs)

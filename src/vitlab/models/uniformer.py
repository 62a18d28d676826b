"""UniFormer: Unifying Convolution and Self-attention (Li et al., arXiv 2201.09450; official code Sense-X/UniFormer).

Four stages at strides 4/8/16/32. Stages 1-2 use local MHRA (a depth-wise 5x5 convolution as a
learnable local affinity, BatchNorm), stages 3-4 global MHRA (self-attention, LayerNorm); every
block starts with a depth-wise 3x3 convolution as dynamic position encoding. The head is
BatchNorm -> global average pool -> linear.

Options beyond the plain classifier, each matching an official file:

* ``token_labeling=True`` (``token_labeling/tlt/models/uniformer.py``): layer scale also in the
  convolutional blocks and, with ``return_dense=True``, an ``aux_head`` classifying every token.
  ``forward`` returns ``head(mean) + 0.5 * max_tokens(aux_head(tokens))`` in training and eval
  mode; ``forward_train`` the separate ``TrainOutput(logits, aux_logits)`` for the loss (+ the
  MixToken box with ``mix_token=True`` in training mode).
* ``layer_scale`` / ``init_value``: the official module-global flag as constructor arguments
  (the official global leaks into every model built later in the process; here it does not).
* ``dense=True`` (the detection/segmentation backbone): no classifier, a LayerNorm after each
  stage, ``forward`` returns the four NCHW maps; ``windows=True`` puts 14x14 window attention in
  every stage-3 block, ``hybrid=True`` in three of every four; ``freeze_bn=True`` freezes BatchNorm.

Parameter names follow the official code so official checkpoints load with ``strict=True``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vitlab.layers import freeze_batch_norm
from vitlab.models.base import TrainOutput, VitlabModel, check_image_input, default_pretrained_cfg
from vitlab.models.features import feature_info_entry, feature_take_indices
from vitlab.models.registry import register_family, register_model
from vitlab.models.uniformer_blocks import (AttnBlock, ConvBlock, ConvStemEmbed, PatchEmbed, check_stage_config,
                                            default_norm_layer, init_uniformer_weights, stochastic_depth_rates)

STAGE_REDUCTIONS = (4, 8, 16, 32)


def mix_token_box(grid_hw: tuple[int, int], lam: float, generator: torch.Generator | None = None):
    """Random box (y1, x1, y2, x2) on a grid covering about (1 - lam) of it (token labeling's MixToken)."""
    H, W = grid_hw
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(H * cut), int(W * cut)
    cy = int(torch.randint(H, (1,), generator=generator))
    cx = int(torch.randint(W, (1,), generator=generator))

    def clamp(v, hi):
        return max(0, min(hi, v))
    return clamp(cy - cut_h // 2, H), clamp(cx - cut_w // 2, W), clamp(cy + cut_h // 2, H), clamp(cx + cut_w // 2, W)


def _swap_box(x: torch.Tensor, box) -> torch.Tensor:
    """Replace the (y1, x1, y2, x2) box of an NCHW map with the same box of the batch-flipped map."""
    y1, x1, y2, x2 = box
    out = x.clone()
    out[:, :, y1:y2, x1:x2] = x.flip(0)[:, :, y1:y2, x1:x2]
    return out


class UniFormer(VitlabModel):
    """UniFormer for images. Arguments are the official ``UniFormer.__init__`` ones plus
    ``layer_scale``, ``init_value``, ``token_labeling`` and the dense-backbone options
    ``dense``, ``windows``, ``hybrid``, ``window_size``, ``freeze_bn`` (``layers`` is accepted as the
    detection code's name for ``depth``; ``use_checkpoint`` turns on gradient checkpointing).
    """

    classifier_names = ("head", "aux_head")

    def __init__(self, depth=(3, 4, 8, 3), img_size: int = 224, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim=(64, 128, 320, 512), head_dim: int = 64, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 qk_scale: float | None = None, representation_size: int | None = None, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, norm_layer=None, conv_stem: bool = False,
                 mix_token: bool = False, return_dense: bool = False, layer_scale: bool = False,
                 init_value: float = 1e-6, token_labeling: bool = False, dense: bool = False, windows: bool = False,
                 hybrid: bool = False, window_size: int = 14, freeze_bn: bool = False, layers=None,
                 use_checkpoint: bool = False, checkpoint_num=None):
        super().__init__()
        depth = list(layers if layers is not None else depth)
        embed_dim = list(embed_dim)
        check_stage_config(depth, embed_dim, head_dim, representation_size)
        if mix_token and not return_dense:
            raise ValueError("mix_token=True needs return_dense=True (the aux head un-mixes the tokens)")
        if dense and return_dense:
            raise ValueError("dense=True builds a backbone without classifier; return_dense (aux head) cannot be used")
        if windows and hybrid:
            raise ValueError("choose one of windows=True (all stage-3 blocks windowed) or hybrid=True")
        if (windows or hybrid) and not dense:
            raise ValueError("window/hybrid attention is a dense-backbone option: pass dense=True as well")

        self.depth, self.embed_dim, self.head_dim = depth, embed_dim, head_dim
        self.in_chans, self.img_size = in_chans, img_size
        self.num_classes = 0 if dense else num_classes
        self.conv_stem, self.token_labeling = conv_stem, token_labeling
        self.return_dense, self.mix_token, self.dense = return_dense, mix_token, dense
        self.num_features = embed_dim[-1]
        norm_layer = default_norm_layer(norm_layer)

        if conv_stem:
            self.patch_embed1 = ConvStemEmbed(in_chans, embed_dim[0], first=True)
            for i in range(1, 4):
                setattr(self, f"patch_embed{i + 1}", ConvStemEmbed(embed_dim[i - 1], embed_dim[i], first=False))
        else:
            self.patch_embed1 = PatchEmbed(in_chans, embed_dim[0], 4, 4)
            for i in range(1, 4):
                setattr(self, f"patch_embed{i + 1}", PatchEmbed(embed_dim[i - 1], embed_dim[i], 2, 2))
        self.pos_drop = nn.Dropout(drop_rate)

        dpr = stochastic_depth_rates(drop_path_rate, depth)
        num_heads = [d // head_dim for d in embed_dim]
        conv_ls = layer_scale and token_labeling  # the plain file gives layer scale to SABlocks only
        for s in range(2):
            setattr(self, f"blocks{s + 1}", nn.ModuleList([
                ConvBlock(embed_dim[s], mlp_ratio, drop_rate, dpr[s][i], layer_scale=conv_ls, init_value=init_value)
                for i in range(depth[s])]))
        for s in range(2, 4):
            blocks = []
            for i in range(depth[s]):
                windowed = s == 2 and (windows or (hybrid and (i + 1) % 4 != 0))
                blocks.append(AttnBlock(embed_dim[s], num_heads[s], mlp_ratio, qkv_bias, qk_scale, drop_rate,
                                        attn_drop_rate, dpr[s][i], norm_layer=norm_layer, layer_scale=layer_scale,
                                        init_value=init_value, window_size=window_size if windowed else None))
            setattr(self, f"blocks{s + 1}", nn.ModuleList(blocks))

        if dense:
            for s in range(4):
                setattr(self, f"norm{s + 1}", norm_layer(embed_dim[s]))
        else:
            self.norm = nn.BatchNorm2d(embed_dim[-1])
            self.head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
            if return_dense:
                self.aux_head = nn.Linear(embed_dim[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_uniformer_weights)
        if freeze_bn:
            freeze_batch_norm(self)
        if use_checkpoint:
            self.set_grad_checkpointing(True)

        prefix = "norm" if dense else "blocks"
        self.feature_info = [feature_info_entry(embed_dim[s], STAGE_REDUCTIONS[s], f"{prefix}{s + 1}")
                             for s in range(4)]
        self.pretrained_cfg = default_pretrained_cfg(img_size, self.num_classes, crop_pct=0.875,
                                                     first_conv="patch_embed1.proj", classifier="head")

    # --- API ---------------------------------------------------------------------------------
    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {n for n, _ in self.named_parameters() if n.endswith(("gamma_1", "gamma_2"))}

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (and aux head) with fresh ones for ``num_classes`` (0 = identity)."""
        if self.dense:
            raise ValueError("a dense UniFormer backbone has no classifier to reset")
        self.num_classes = num_classes
        make = lambda: nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()  # noqa: E731
        self.head = make()
        if self.return_dense:
            self.aux_head = make()
        for m in (self.head, getattr(self, "aux_head", None)):
            if m is not None:
                init_uniformer_weights(m)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def _check(self, x: torch.Tensor) -> None:
        check_image_input(x, self.in_chans, "UniFormer", dtype=self._weight_dtype())
        if min(x.shape[-2:]) < 32:
            raise ValueError(f"UniFormer downsamples by 32: inputs must be at least 32x32, got "
                             f"{x.shape[-2]}x{x.shape[-1]}")

    def _stages(self, x: torch.Tensor, collect: set[int] | None = None, mix_box=None):
        """Run the four stages on an NCHW map; optionally collect the (dense: normalised) stage outputs."""
        feats = []
        for s in range(4):
            x = getattr(self, f"patch_embed{s + 1}")(x)
            if s == 0:
                x = self.pos_drop(x)
                if mix_box is not None:
                    x = _swap_box(x, mix_box)
            x = self._run_blocks(getattr(self, f"blocks{s + 1}"), x)
            if collect is not None and s in collect:
                feats.append(self._stage_norm(s, x) if self.dense else x)
        return x, feats

    def _stage_norm(self, s: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"norm{s + 1}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H/32, W/32) map of the last stage after the final norm (the BatchNorm; dense: the
        LayerNorm ``norm4``). Sizes not divisible by 32 round down (up with ``conv_stem``)."""
        self._check(x)
        x, _ = self._stages(x)
        return self._stage_norm(3, x) if self.dense else self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits (B, K) from the :meth:`forward_features` map: ``head(mean)``, with an aux head
        ``head(mean) + 0.5 * max_tokens(aux_head(tokens))`` (the same in training and eval mode)."""
        if self.dense:
            raise ValueError("a dense UniFormer backbone has no classification head; use forward_intermediates")
        pooled = x.flatten(2).mean(-1)
        if pre_logits:
            return pooled
        logits = self.head(pooled)
        if not self.return_dense:
            return logits
        return logits + 0.5 * self.aux_head(x.flatten(2).transpose(1, 2)).max(1).values

    def forward(self, x: torch.Tensor):
        """Logits (B, K) in training and eval mode (no MixToken); a dense backbone returns its four maps."""
        if self.dense:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        """Outputs for the token-labeling loss: ``TrainOutput(head(mean), aux_head(tokens), box)``.

        ``logits`` (B, K) is the pooled head alone; ``aux_logits`` (B, N, K) the aux head on the N
        stride-32 tokens (row-major). With ``mix_token=True`` in training mode (MixToken) a box of
        stride-4 tokens, aligned to the stride-32 grid, is swapped with the batch-flipped images'
        after the first patch embedding; the aux logits are swapped back so each row's tokens are its
        own image's, and ``mix_box`` is the box (y1, x1, y2, x2) on the stride-32 grid. Without an aux
        head: ``TrainOutput(self(x))``.
        """
        if self.dense:
            raise ValueError("a dense UniFormer backbone has no classification outputs to train; "
                             "use forward_intermediates")
        if not self.return_dense:
            return TrainOutput(self(x))
        self._check(x)
        box = mix_box = None
        if self.mix_token and self.training:
            scale = STAGE_REDUCTIONS[-1] // STAGE_REDUCTIONS[0]
            h, w = x.shape[-2] // 32, x.shape[-1] // 32
            lam = float(torch.distributions.Beta(1.0, 1.0).sample())
            box = mix_token_box((h, w), lam)
            mix_box = tuple(c * scale for c in box)
        x, _ = self._stages(x, mix_box=mix_box)
        x = self.norm(x)
        logits = self.head(x.flatten(2).mean(-1))
        aux = self.aux_head(x.flatten(2).transpose(1, 2))
        if box is not None:
            aux = aux.transpose(1, 2).reshape(aux.shape[0], -1, *x.shape[-2:])
            aux = _swap_box(aux, box).flatten(2).transpose(1, 2)
        return TrainOutput(logits, aux, box)

    def forward_intermediates(self, x: torch.Tensor, indices=None) -> list[torch.Tensor]:
        """NCHW stage outputs at strides 4, 8, 16, 32 (dense mode: after the per-stage LayerNorms)."""
        self._check(x)
        take = feature_take_indices(4, indices)
        _, feats = self._stages(x, set(take))
        return feats

    def checkpoint_filter(self, state_dict: dict, notes: list[str]) -> dict:
        """Classification checkpoint -> dense backbone: drop ``norm``/``head``/``aux_head``, add fresh stage norms."""
        if not self.dense:
            return state_dict
        stage_norms = [k for k in self.state_dict() if k.split(".")[0] in ("norm1", "norm2", "norm3", "norm4")]
        if any(k in state_dict for k in stage_norms):
            return state_dict
        dropped = sorted(k for k in state_dict if k.split(".")[0] in ("norm", "head", "aux_head"))
        if not dropped:
            return state_dict
        state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
        own = self.state_dict()
        for k in stage_norms:
            state_dict[k] = own[k].clone()
        notes.append(f"classification checkpoint into a dense backbone: dropped {len(dropped)} keys "
                     f"({', '.join(dropped)})")
        notes.append(f"added {len(stage_norms)} freshly initialised keys ({', '.join(stage_norms)})")
        return state_dict


def _uniformer_dense(**kwargs) -> UniFormer:
    """UniFormer dense backbone (detection/segmentation code's constructor: ``layers``, ``windows``, ``hybrid``)."""
    for unused in ("pretrained_path", "num_classes"):
        kwargs.pop(unused, None)
    return UniFormer(dense=True, **kwargs)


register_family("uniformer", UniFormer, aliases=("uniformer_image",),
                doc="UniFormer (image) with the official constructor arguments (depth, embed_dim, head_dim, ...)")
register_family("uniformer_dense", _uniformer_dense,
                doc="UniFormer backbone for detection/segmentation (per-stage LayerNorms, window/hybrid stage 3)")

UNIFORMER_ARCHS = {
    "small": dict(depth=[3, 4, 8, 3], embed_dim=[64, 128, 320, 512], head_dim=64),
    "small_plus": dict(depth=[3, 5, 9, 3], embed_dim=[64, 128, 320, 512], head_dim=32, conv_stem=True),
    "base": dict(depth=[5, 8, 20, 7], embed_dim=[64, 128, 320, 512], head_dim=64),
    "base_ls": dict(depth=[5, 8, 20, 7], embed_dim=[64, 128, 320, 512], head_dim=64, layer_scale=True),
    "large_ls": dict(depth=[5, 10, 24, 7], embed_dim=[128, 192, 448, 640], head_dim=64, layer_scale=True),
    "micro": dict(depth=[1, 1, 2, 1], embed_dim=[16, 32, 64, 96], head_dim=16, img_size=64),
}
_TL = dict(token_labeling=True, return_dense=True)


def _uniformer(arch: str, **kwargs) -> UniFormer:
    return UniFormer(**{"mlp_ratio": 4, "qkv_bias": True, **UNIFORMER_ARCHS[arch], **kwargs})


@register_model
def uniformer_small(**kwargs):
    """UniFormer-S: 21.5M params, 3.6 GMACs, 82.9% top-1."""
    return _uniformer("small", **kwargs)


@register_model
def uniformer_small_plus(**kwargs):
    """UniFormer-S+ (conv stem, head_dim 32): 24.0M params, 4.2 GMACs, 83.4% top-1."""
    return _uniformer("small_plus", **kwargs)


@register_model
def uniformer_base(**kwargs):
    """UniFormer-B: 49.8M params, 8.3 GMACs, 83.9% top-1."""
    return _uniformer("base", **kwargs)


@register_model
def uniformer_base_ls(**kwargs):
    """UniFormer-B with layer scale in the attention blocks: 49.8M params, 8.3 GMACs."""
    return _uniformer("base_ls", **kwargs)


@register_model(aliases=("uniformer_small_tl",))
def uniformer_small_token_labeling(**kwargs):
    """UniFormer-S trained with token labeling (head_dim 32, aux head): 22.1M params, 83.4% top-1."""
    return _uniformer("small", **{"head_dim": 32, **_TL, **kwargs})


@register_model(aliases=("uniformer_small_plus_tl",))
def uniformer_small_plus_token_labeling(**kwargs):
    """UniFormer-S+ trained with token labeling (aux head): 24.5M params, 83.9% top-1."""
    return _uniformer("small_plus", **{**_TL, **kwargs})


@register_model(aliases=("uniformer_base_tl",))
def uniformer_base_token_labeling(**kwargs):
    """UniFormer-B trained with token labeling (head_dim 32, aux head): 50.3M params, 85.1% top-1."""
    return _uniformer("base", **{"head_dim": 32, **_TL, **kwargs})


@register_model(aliases=("uniformer_large_ls_tl",))
def uniformer_large_ls(**kwargs):
    """UniFormer-L (token labeling, layer scale everywhere, aux head): 100.1M params, 12.6 GMACs, 85.6% top-1."""
    return _uniformer("large_ls", **{**_TL, **kwargs})


@register_model
def uniformer_micro(**kwargs):
    """Micro UniFormer for tests and CPU demos (64 px, depth 1/1/2/1, dims 16-96)."""
    return _uniformer("micro", **kwargs)

"""SegViT's Attention-to-Mask decoder (Zhang et al., arXiv 2210.05844, Sec. 3.1-3.2).

One learnable query per class cross-attends to the projected ViT tokens of several layers, deepest
first; the queries carry over from stage to stage. Each stage's ATM attention yields per-class mask
logits on its token grid; the masks of successive stages are summed after bilinear upsampling. A
linear class head gives ``num_classes + 1`` logits per query ("no object" last) and the semantic
output is ``sum_q softmax(class)[q, :K] * sigmoid(mask_q)``.

Constructor arguments and parameter names follow the official ``ATMHead``/``ATMSingleHead``
(mmseg decode heads), so released ``decode_head.*`` weights load directly. Inputs may be NCHW maps
or square (B, N, C) token sequences; unlike the official code any grid size works (it drops a token
when the count is odd).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.attention.atm import ATMAttention, PackedMultiheadAttention
from vitlab.layers import init_weights_trunc_normal

# mmseg BaseDecodeHead arguments the ATM heads accept but do not use (they have no effect here)
MMSEG_HEAD_KWARGS = {"channels", "dropout_ratio", "conv_cfg", "norm_cfg", "act_cfg", "in_index", "input_transform",
                     "loss_decode", "ignore_index", "sampler", "align_corners", "init_cfg", "CE_loss", "crop_train",
                     "type"}


def check_head_kwargs(name: str, kwargs: dict) -> None:
    unknown = sorted(set(kwargs) - MMSEG_HEAD_KWARGS)
    if unknown:
        raise TypeError(f"{name} got unexpected arguments {unknown}")


def flatten_feature(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, C, h, w) map or square (B, N, C) tokens -> ((B, h*w, C) tokens, (h, w))."""
    if x.ndim == 4:
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])
    if x.ndim == 3:
        side = math.isqrt(x.shape[1])
        if side * side != x.shape[1]:
            raise ValueError(f"token input with {x.shape[1]} tokens is not a square grid; pass (B, C, h, w) maps "
                             f"to use a non-square grid")
        return x, (side, side)
    raise ValueError(f"expected a (B, C, h, w) feature map or (B, N, C) tokens, got shape {tuple(x.shape)}")


def tokens_to_map(t: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    if t.shape[1] != hw[0] * hw[1]:
        raise ValueError(f"cannot lay {t.shape[1]} tokens out on a {hw[0]}x{hw[1]} grid")
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], hw[0], hw[1])


def semantic_inference(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-class probabilities (B, K, H, W) = einsum(softmax(logits)[..., :K], sigmoid(masks)) (Sec. 3.1)."""
    probs = class_logits.softmax(-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid())


class ATMDecoderLayer(nn.Module):
    """Post-norm decoder layer: query self-attention, ATM cross-attention, ReLU FFN (``TPN_DecoderLayer``).

    Batch-first (B, Q, C) queries and (B, N, C) tokens; returns (queries, mask logits (B, Q, N)).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float = 0.1,
                 layer_norm_eps: float = 1e-5):
        super().__init__()
        self.self_attn = PackedMultiheadAttention(d_model, nhead, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm2 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.norm3 = nn.LayerNorm(d_model, eps=layer_norm_eps)
        self.dropout, self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(4))
        # registered last, as in the official layer (which replaces torch's cross-attention after init)
        self.multihead_attn = ATMAttention(d_model, nhead, qkv_bias=True, attn_drop=0.1)

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.norm1(q + self.dropout1(self.self_attn(q)))
        out, mask_logits = self.multihead_attn(q, memory)
        q = self.norm2(q + self.dropout2(out))
        q = self.norm3(q + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(q))))))
        return q, mask_logits


class ATMDecoder(nn.Module):
    """A stack of :class:`ATMDecoderLayer`; returns every layer's (queries, mask logits)."""

    def __init__(self, d_model: int, nhead: int, num_layers: int, dropout: float = 0.1):
        super().__init__()
        self.layers = nn.ModuleList(ATMDecoderLayer(d_model, nhead, 4 * d_model, dropout) for _ in range(num_layers))

    def forward(self, q: torch.Tensor, memory: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        outs = []
        for layer in self.layers:
            q, mask_logits = layer(q, memory)
            outs.append((q, mask_logits))
        return outs


class _ATMBase(nn.Module):
    """Shared parts: per-stage projections (``input_proj_i``/``proj_norm_i``), decoders, class queries and head."""

    def __init__(self, img_size: int, in_channels: int, num_classes: int, embed_dims: int, num_layers: int,
                 num_heads: int, use_stages: int, use_proj: bool, ignore_index: int = 255):
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.image_size = img_size
        self.in_channels, self.num_classes, self.embed_dims = in_channels, num_classes, embed_dims
        self.use_stages, self.num_layers, self.ignore_index = use_stages, num_layers, ignore_index
        for i in range(use_stages):
            self.add_module(f"input_proj_{i + 1}", nn.Linear(in_channels, embed_dims) if use_proj else nn.Identity())
            self.add_module(f"proj_norm_{i + 1}", nn.LayerNorm(embed_dims) if use_proj else nn.Identity())
            self.add_module(f"decoder_{i + 1}", ATMDecoder(embed_dims, num_heads, num_layers))
        self.q = nn.Embedding(num_classes, embed_dims)
        self.class_embed = nn.Linear(embed_dims, num_classes + 1)
        for name, m in self.named_modules():
            init_weights_trunc_normal(m)

    def reset_classes(self, num_classes: int) -> None:
        """Fresh class queries and class head for ``num_classes`` (the rest of the decoder is kept)."""
        device = self.class_embed.weight.device
        self.num_classes = num_classes
        self.q = nn.Embedding(num_classes, self.embed_dims, device=device)
        self.class_embed = nn.Linear(self.embed_dims, num_classes + 1, device=device)
        init_weights_trunc_normal(self.class_embed)

    def _stage(self, i: int) -> tuple[nn.Module, nn.Module, ATMDecoder]:
        return getattr(self, f"input_proj_{i + 1}"), getattr(self, f"proj_norm_{i + 1}"), getattr(self, f"decoder_{i + 1}")

    def _take_inputs(self, inputs) -> list[tuple[torch.Tensor, tuple[int, int]]]:
        if isinstance(inputs, torch.Tensor):
            inputs = [inputs]
        if len(inputs) < self.use_stages:
            raise ValueError(f"{type(self).__name__} uses {self.use_stages} feature maps, got {len(inputs)}")
        return [flatten_feature(x) for x in inputs[:self.use_stages]]

    def _out_size(self, out_size) -> tuple[int, int]:
        if out_size is None:
            return (self.image_size, self.image_size)
        return (out_size, out_size) if isinstance(out_size, int) else tuple(out_size)

    def _finish(self, class_logits: list[torch.Tensor], masks: list[torch.Tensor], out_size, with_aux: bool,
                with_pred: bool = True) -> dict:
        """Assemble the official output dict from per-output class logits and (map-size) mask logits."""
        out = {"pred_logits": class_logits[-1],
               "pred_masks": F.interpolate(masks[-1], size=self._out_size(out_size), mode="bilinear",
                                           align_corners=False)}
        if with_pred:
            out["pred"] = semantic_inference(out["pred_logits"], out["pred_masks"])
        if with_aux:
            out["aux_outputs"] = [{"pred_logits": c, "pred_masks": m} for c, m in zip(class_logits[:-1], masks[:-1])]
        return out

    def forward(self, inputs, out_size=None):
        """Eval: per-class probabilities (B, K, H, W). Training: the dict the ATM loss takes
        (``pred_logits``, ``pred_masks``, ``pred``, ``aux_outputs``). ``out_size`` defaults to ``img_size``."""
        out = self.forward_outputs(inputs, out_size, with_aux=self.training)
        return out if self.training else out["pred"]

    def forward_outputs(self, inputs, out_size=None, with_aux: bool = True, with_pred: bool = True) -> dict:
        raise NotImplementedError


class ATMHead(_ATMBase):
    """SegViT's ATM decoder over ``use_stages`` backbone outputs (official ``ATMHead`` arguments).

    ``inputs`` are the backbone outputs shallow -> deep; the first ``use_stages`` are used deepest
    first (the deepest goes through ``input_proj_1``/``decoder_1``). Mask logits are accumulated
    over stages at the last stage's grid; ``aux_outputs`` hold the earlier stages.
    """

    def __init__(self, img_size: int, in_channels: int, num_classes: int, embed_dims: int = 768, num_layers: int = 3,
                 num_heads: int = 8, use_stages: int = 3, use_proj: bool = True, shrink_ratio=None,
                 ignore_index: int = 255, **kwargs):
        check_head_kwargs("ATMHead", kwargs)
        super().__init__(img_size, in_channels, num_classes, embed_dims, num_layers, num_heads, use_stages, use_proj,
                         ignore_index)

    def forward_outputs(self, inputs, out_size=None, with_aux: bool = True, with_pred: bool = True) -> dict:
        feats = self._take_inputs(inputs)[::-1]
        B = feats[0][0].shape[0]
        q = self.q.weight.unsqueeze(0).repeat(B, 1, 1)
        qs, masks = [], []
        for i, (x, hw) in enumerate(feats):
            proj, norm, decoder = self._stage(i)
            q, mask_logits = decoder(q, norm(proj(x)))[-1]
            qs.append(q)
            masks.append(tokens_to_map(mask_logits.transpose(1, 2), hw))
        size = masks[-1].shape[-2:]
        cumulative, acc = [], None
        for m in masks:
            m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            acc = m if acc is None else acc + m
            cumulative.append(acc)
        return self._finish(list(self.class_embed(torch.stack(qs))), cumulative, out_size, with_aux, with_pred)


class ATMSingleHead(_ATMBase):
    """ATM decoder on one fused map where every decoder *layer* emits an output (official ``ATMSingleHead``).

    The projected stages are fused top-down (a lateral plus the nearest-upsampled previous one);
    the class queries decode the fused map, and masks are not accumulated across layers.
    """

    def __init__(self, img_size: int, in_channels: int, num_classes: int, embed_dims: int = 768, num_layers: int = 3,
                 num_heads: int = 8, use_stages: int = 3, use_proj: bool = True, ignore_index: int = 255, **kwargs):
        check_head_kwargs("ATMSingleHead", kwargs)
        super().__init__(img_size, in_channels, num_classes, embed_dims, num_layers, num_heads, use_stages, use_proj,
                         ignore_index)

    def forward_outputs(self, inputs, out_size=None, with_aux: bool = True, with_pred: bool = True) -> dict:
        feats = self._take_inputs(inputs)[::-1]
        lateral, hw = None, None
        for i, (x, x_hw) in enumerate(feats):
            proj, norm, _ = self._stage(i)
            cur = norm(proj(x))
            if lateral is not None:
                prev = F.interpolate(tokens_to_map(lateral, hw), size=x_hw, mode="nearest")
                cur = cur + prev.flatten(2).transpose(1, 2)
            lateral, hw = cur, x_hw
        B = lateral.shape[0]
        q = self.q.weight.unsqueeze(0).repeat(B, 1, 1)
        qs, masks = [], []
        for i in range(self.use_stages):
            for q_i, mask_logits in self._stage(i)[2](q, lateral):
                qs.append(q_i)
                masks.append(tokens_to_map(mask_logits.transpose(1, 2), hw))
            q = qs[-1]
        return self._finish(list(self.class_embed(torch.stack(qs))), masks, out_size, with_aux, with_pred)


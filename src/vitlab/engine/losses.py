"""Classification losses for single-head and token-labeling models.

A model with an auxiliary token head (VOLO, token-labeling UniFormer) returns
``(cls_logits, aux_logits[, mix_box])`` in training mode, ``aux_logits`` of shape (B, N, K).
The loss is ``CE(cls_logits, y) + aux_weight * mean_tokens CE(aux_logits, y_dense)`` (token
labeling, Jiang et al., arXiv 2104.10858, Eq. 3, with weight 0.5 as in VOLO's recipe). Without
token-label maps, every token's dense target is the image's own (smoothed, mixed) label: the
fallback that token labeling reduces to when no annotator is available. With MixToken the model
has already un-mixed the aux logits, so the dense targets stay per image, while the class target
is mixed by the kept area ``lam``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of ``-sum_k target_k log softmax(logits)_k``; logits (..., K), target broadcastable."""
    return torch.sum(-target * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()


def mix_token_lam(box, grid_hw: tuple[int, int]) -> float:
    y1, x1, y2, x2 = box
    return 1.0 - (y2 - y1) * (x2 - x1) / (grid_hw[0] * grid_hw[1])


def dense_targets(maps: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B, K, h, w) score maps -> (B, N, K) per-token distributions on the aux token grid (N = side^2)."""
    side = int(round(num_tokens ** 0.5))
    if side * side != num_tokens:
        raise ValueError(f"token labels need a square token grid, got {num_tokens} tokens")
    if maps.shape[-2:] != (side, side):
        maps = F.adaptive_avg_pool2d(maps.float(), side)
    probs = maps.float().flatten(2).transpose(1, 2)
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-12)


def classification_loss(output, target: torch.Tensor, aux_weight: float = 0.5,
                        token_maps: torch.Tensor | None = None) -> torch.Tensor:
    """``output``: logits (B, K) or ``(cls, aux[, box])``; ``target``: soft (B, K) distributions."""
    if isinstance(output, torch.Tensor):
        if token_maps is not None:
            raise ValueError("token labels need a model with an auxiliary token head that returns "
                             "(cls_logits, aux_logits) in training mode (e.g. VOLO with return_dense=True)")
        return soft_cross_entropy(output, target)
    if not isinstance(output, (tuple, list)) or len(output) not in (2, 3):
        raise TypeError(f"model output must be logits or (cls_logits, aux_logits[, box]), got {type(output)}")
    cls, aux = output[0], output[1]
    if aux.ndim != 3:
        raise ValueError(f"aux logits must be (B, N, K), got {tuple(aux.shape)}")
    cls_target = target
    if len(output) == 3:  # MixToken: the class token saw a mixed image
        side = int(round(aux.shape[1] ** 0.5))
        lam = mix_token_lam(output[2], (side, side))
        cls_target = target * lam + target.flip(0) * (1.0 - lam)
    dense = dense_targets(token_maps, aux.shape[1]) if token_maps is not None else target.unsqueeze(1)
    return soft_cross_entropy(cls, cls_target) + aux_weight * soft_cross_entropy(aux, dense)

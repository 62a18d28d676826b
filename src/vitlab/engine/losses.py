"""Classification losses for single-head and token-labeling models.

The loss reads :meth:`~vitlab.models.base.VitlabModel.forward_train`'s
:class:`~vitlab.models.base.TrainOutput` ``(logits, aux_logits, mix_box)`` (or plain logits,
e.g. ``model(x)``). A model with an auxiliary token head (VOLO, token-labeling UniFormer) gives
class-head ``logits`` (B, K), not merged with the aux head, and ``aux_logits`` (B, N, K); light
UniFormer gives its class-token logits as a one-token ``aux_logits`` (B, 1, K).
The loss is ``CE(logits, y) + aux_weight * mean_tokens CE(aux_logits, y_dense)`` (token
labeling, Jiang et al., arXiv 2104.10858, Eq. 3, with weight 0.5 as in VOLO's recipe). Without
token-label maps, every token's dense target is the image's own (smoothed, mixed) label: the
fallback that token labeling reduces to when no annotator is available. With MixToken
(``mix_box`` set) the model has already un-mixed the aux logits, so the dense targets stay per
image, while the class target is mixed by the kept area ``lam = 1 - box area / grid area``.
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
    """Soft-target loss of a model output against ``target`` (B, K) distributions.

    ``output`` is logits (B, K) or a :class:`~vitlab.models.base.TrainOutput` / tuple
    ``(logits, aux_logits, mix_box)`` whose ``aux_logits`` and ``mix_box`` may be None (a 2-tuple
    ``(logits, aux_logits)`` works too). ``token_maps`` (B, K, h, w) are token-label score maps
    for the aux head; they need aux logits.
    """
    box = None
    if isinstance(output, torch.Tensor):
        cls, aux = output, None
    elif isinstance(output, (tuple, list)) and len(output) in (2, 3):
        cls, aux = output[0], output[1]
        box = output[2] if len(output) == 3 else None
    else:
        raise TypeError(f"model output must be logits (B, K) or a TrainOutput / (logits, aux_logits[, mix_box]) "
                        f"tuple from model.forward_train(x), got {type(output).__name__}")
    if not isinstance(cls, torch.Tensor) or cls.ndim != 2:
        got = tuple(cls.shape) if isinstance(cls, torch.Tensor) else type(cls).__name__
        raise ValueError(f"class logits must be (B, K), got {got}")
    if aux is None:
        if token_maps is not None:
            raise ValueError("token labels need a model with an auxiliary token head (e.g. VOLO with "
                             "return_dense=True) and its model.forward_train(x) output, which carries aux_logits")
        if box is not None:
            raise ValueError("a MixToken box needs the aux logits it was un-mixed with (got aux_logits=None)")
        return soft_cross_entropy(cls, target)
    if not isinstance(aux, torch.Tensor) or aux.ndim != 3:
        got = tuple(aux.shape) if isinstance(aux, torch.Tensor) else type(aux).__name__
        raise ValueError(f"aux logits must be (B, N, K), got {got}")
    cls_target = target
    if box is not None:  # MixToken: the class token saw a mixed image
        side = int(round(aux.shape[1] ** 0.5))
        lam = mix_token_lam(box, (side, side))
        cls_target = target * lam + target.flip(0) * (1.0 - lam)
    dense = dense_targets(token_maps, aux.shape[1]) if token_maps is not None else target.unsqueeze(1)
    return soft_cross_entropy(cls, cls_target) + aux_weight * soft_cross_entropy(aux, dense)

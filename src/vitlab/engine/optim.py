"""Optimizer parameter groups and gradient clipping.

Groups follow timm: no weight decay on 1-D tensors (norm weights), biases and, unless switched off,
``model.no_weight_decay()`` (DINO decays those, ``no_decay_from_model=False``); optional layer-wise
lr decay (BEiT, arXiv 2106.08254, fine-tuning recipe) and lr multipliers by name prefix (mmseg's
``paramwise_cfg``, e.g. ``{"decode_head": 10}``). Each group carries ``lr_scale`` and ``wd_scale`` for
:class:`~vitlab.engine.schedule.StepSchedule`.
"""
from __future__ import annotations

import re

import torch
from torch import nn

EMBED_PREFIXES = ("patch_embed", "pos_embed", "cls_token", "stem", "embed", "dist_token", "mask_token")
_BLOCK = re.compile(r"^((?:[A-Za-z_]+\.)*?[A-Za-z_]+\.\d+)(\.\d+)?(?:\.|$)")


def no_decay_names(model: nn.Module, from_model: bool = True) -> set[str]:
    """Parameters without weight decay: 1-D tensors, biases and (``from_model``) ``model.no_weight_decay()``."""
    skip = set(model.no_weight_decay()) if from_model and hasattr(model, "no_weight_decay") else set()
    out = set()
    for name, p in model.named_parameters():
        if p.ndim <= 1 or name.endswith(".bias") or name in skip or name.split(".")[-1] in skip:
            out.add(name)
    return out


def layer_ids(model: nn.Module) -> tuple[dict[str, int], int]:
    """Depth index of every parameter: 0 for embeddings, 1..L for blocks in order, L+1 for norms/heads after them."""
    names = [n for n, _ in model.named_parameters()]
    block_keys: list[str] = []
    key_of: dict[str, str | None] = {}
    for n in names:
        m = None if n.startswith(EMBED_PREFIXES) else _BLOCK.match(n)
        key = None if m is None else m.group(1) + (m.group(2) or "")
        key_of[n] = key
        if key is not None and key not in block_keys:
            block_keys.append(key)
    depth = len(block_keys)
    seen_block = False
    ids = {}
    for n in names:
        if key_of[n] is not None:
            ids[n] = block_keys.index(key_of[n]) + 1
            seen_block = True
        elif n.startswith(EMBED_PREFIXES) or not seen_block:
            ids[n] = 0
        else:
            ids[n] = depth + 1
    return ids, depth + 2


def _lr_mult(name: str, lr_mult: dict[str, float]) -> float:
    """The multiplier of the longest matching prefix (``decode_head`` matches ``decode_head.conv.weight``)."""
    best, mult = -1, 1.0
    for prefix, value in lr_mult.items():
        if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
            best, mult = len(prefix), float(value)
    return mult


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None,
                 lr_mult: dict[str, float] | None = None, no_decay_from_model: bool = True) -> list[dict]:
    """Groups keyed by (decay or not, lr scale); each carries ``lr_scale``, ``wd_scale`` and ``param_names``."""
    skip = no_decay_names(model, no_decay_from_model)
    ids, num_layers = layer_ids(model) if layer_decay else ({}, 1)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = name in skip
        scale = layer_decay ** (num_layers - 1 - ids.get(name, 0)) if layer_decay else 1.0
        scale *= _lr_mult(name, lr_mult or {})
        key = (no_wd, scale)
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "weight_decay": 0.0 if no_wd else weight_decay,
                           "lr_scale": scale, "wd_scale": 0.0 if no_wd else 1.0}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def create_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """AdamW or SGD over :func:`param_groups` of ``model`` from the ``optim`` config section."""
    groups = param_groups(model, cfg["weight_decay"], cfg.get("layer_decay"), cfg.get("lr_mult"),
                          cfg.get("no_decay_from_model", True))
    for g in groups:
        g.pop("param_names")
    if not groups:
        raise ValueError("the model has no trainable parameters")
    name = cfg.get("name", "adamw")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg.get("momentum", 0.9), nesterov=True)
    raise ValueError(f"optim.name must be adamw or sgd, got {name!r}")


def clip_gradients(parameters, max_norm: float, mode: str = "norm") -> None:
    """``norm``: one global L2 norm (``clip_grad_norm_``); ``per_param``: each parameter's own (DINO)."""
    parameters = [p for p in parameters if p.grad is not None]
    if mode == "norm":
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)
    elif mode == "per_param":
        for p in parameters:
            norm = p.grad.norm(2)
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    else:
        raise ValueError(f"optim.clip_mode must be norm or per_param, got {mode!r}")

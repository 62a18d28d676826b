"""AdamW with timm's parameter groups: no weight decay on norms, biases and ``model.no_weight_decay()``,
optional layer-wise learning-rate decay (BEiT, arXiv 2106.08254, Sec. 2.3 of its fine-tuning recipe).
"""
from __future__ import annotations

import re

import torch
from torch import nn

EMBED_PREFIXES = ("patch_embed", "pos_embed", "cls_token", "stem", "embed", "dist_token", "mask_token")
_BLOCK = re.compile(r"^((?:[A-Za-z_]+\.)*?[A-Za-z_]+\.\d+)(\.\d+)?(?:\.|$)")


def no_decay_names(model: nn.Module) -> set[str]:
    """Parameters without weight decay: 1-D tensors (norm weights, biases) and ``model.no_weight_decay()``."""
    skip = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
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


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float | None = None) -> list[dict]:
    """Groups keyed by (decay or not, layer); each carries ``lr_scale`` for the scheduler."""
    skip = no_decay_names(model)
    ids, num_layers = layer_ids(model) if layer_decay else ({}, 1)
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_wd = name in skip
        layer = ids.get(name, 0)
        scale = layer_decay ** (num_layers - 1 - layer) if layer_decay else 1.0
        key = (no_wd, layer)
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "weight_decay": 0.0 if no_wd else weight_decay,
                           "lr_scale": scale}
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return list(groups.values())


def create_optimizer(model: nn.Module, cfg: dict) -> torch.optim.Optimizer:
    name = cfg.get("name", "adamw").lower()
    groups = param_groups(model, cfg["weight_decay"], cfg.get("layer_decay"))
    for g in groups:
        g.pop("param_names")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"])
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg["lr"], momentum=0.9, nesterov=True)
    raise ValueError(f"optim.name must be adamw or sgd, got {name!r}")

"""timm's ``global_pool`` on vitlab models: 'token' (the class token), 'avg' (the mean over tokens /
positions) or '' (no pooling), per family; :func:`apply_global_pool` sets it on a built model."""
from __future__ import annotations

import types

from torch import nn

# 'token' = the class token, 'avg' = the mean over tokens / positions, '' = no pooling. Token models
# (ViT, VOLO) apply the classifier to every token when unpooled (as timm does); models whose features
# are a map only drop the pooling with the classifier removed (num_classes=0), timm's rule too.
TOKEN_POOLS = {"vit": ("token", "avg", ""), "volo": ("token", "avg", "")}
MAP_POOLS = {f: ("avg", "") for f in ("pale", "uniformer", "uniformer_light", "uniformer_video", "swin")}


def _volo_head(self, x, pre_logits: bool = False):
    """VOLO's head with timm's ``global_pool``: 'token' (x[:, 0]), 'avg' (mean of all tokens) or '' (none);
    the aux head's token-labeling term ``0.5 * max_tokens(aux_head(tokens))`` is added to the logits."""
    pool = self.global_pool
    out = x[:, 0] if pool == "token" else x.mean(1) if pool == "avg" else x
    if pre_logits:
        return out
    if pool == "" and self.num_classes == 0:
        return out
    logits = self.head(out)
    if getattr(self, "return_dense", False) and hasattr(self, "aux_head"):
        aux = 0.5 * self.aux_head(x[:, 1:]).max(1).values
        logits = logits + (aux.unsqueeze(1) if pool == "" else aux)
    return logits


def _unpooled_tokens_head(self, x, pre_logits: bool = False):
    """global_pool='': every token, (B, N, C); with a classifier the logits of every token, (B, N, K)."""
    return x if pre_logits else self.head(x)


def _unpooled_head(self, x, pre_logits: bool = False):
    """global_pool='': the unpooled features (map or tokens) as ``forward_features`` gives them."""
    return x


def check_global_pool(name: str, family: str, pool: str) -> None:
    """Refuse, in one line naming the choices, a ``global_pool`` value the family does not offer."""
    choices = TOKEN_POOLS.get(family) or MAP_POOLS.get(family)
    if choices is None:
        raise ValueError(f"{name}: global_pool is not an option of {family} models (only of "
                         f"{', '.join(sorted({*TOKEN_POOLS, *MAP_POOLS}))})")
    if pool not in choices:
        raise ValueError(f"{name}: global_pool must be one of {', '.join(repr(c) for c in choices)}, got {pool!r}")


def apply_global_pool(model: nn.Module, family: str, pool: str) -> None:
    """Set timm's ``global_pool`` on a built model (after :func:`check_global_pool`)."""
    name = getattr(model, "model_name", family)
    check_global_pool(name, family, pool)
    if family in MAP_POOLS:
        if pool == "":
            if getattr(model, "num_classes", 0):
                raise ValueError(f"{name}: global_pool='' leaves no pooled vector for the classifier; build it "
                                 f"with num_classes=0 as well (forward then returns the unpooled features)")
            model.forward_head = types.MethodType(_unpooled_head, model)
        model.global_pool = pool
    elif family == "volo":
        if getattr(model, "return_mean", False) and pool != "avg":
            raise ValueError(f"{name}: built with return_mean=True, which pools by the mean: global_pool must "
                             f"be 'avg'")
        model.global_pool = pool
        model.forward_head = types.MethodType(_volo_head, model)
    elif pool == "":  # vit: 'token' and 'avg' are constructor arguments
        model.global_pool = pool
        model.forward_head = types.MethodType(_unpooled_tokens_head, model)

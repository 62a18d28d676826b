"""Exponential moving average of model weights (Polyak averaging), as in timm's ModelEma.

``ema = decay * ema + (1 - decay) * weights`` after every optimizer step; with ``warmup`` the
decay starts small, ``min(decay, (1 + n) / (10 + n))``, so early averages are not dominated by the
random initialisation. Integer buffers (BatchNorm counters) are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma(nn.Module):
    def __init__(self, model: nn.Module, decay: float = 0.9998, warmup: bool = True):
        super().__init__()
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.warmup = decay, warmup
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def current_decay(self) -> float:
        n = int(self.num_updates)
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = self.current_decay()
        src = model.state_dict()
        for k, v in self.module.state_dict().items():
            s = src[k].detach()
            if v.is_floating_point():
                v.lerp_(s.to(v.dtype), 1.0 - d)
            else:
                v.copy_(s)
        self.num_updates += 1

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

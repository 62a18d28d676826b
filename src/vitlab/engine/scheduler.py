"""Per-step learning rate: linear warmup, then half-cosine decay to ``min_lr`` (SGDR, arXiv 1608.03983)."""
from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, warmup_lr: float = 1e-6,
          min_lr: float = 0.0) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))


class WarmupCosine:
    """Sets every param group's ``lr = lr_at(step) * group['lr_scale']``; its state is the step number."""

    def __init__(self, optimizer, total_steps: int, base_lr: float, warmup_steps: int = 0, warmup_lr: float = 1e-6,
                 min_lr: float = 0.0):
        self.optimizer, self.total_steps, self.base_lr = optimizer, total_steps, base_lr
        self.warmup_steps, self.warmup_lr, self.min_lr = warmup_steps, warmup_lr, min_lr
        self.step_num = 0
        self.apply()

    def current(self) -> float:
        return lr_at(self.step_num, self.total_steps, self.base_lr, self.warmup_steps, self.warmup_lr, self.min_lr)

    def apply(self) -> float:
        lr = self.current()
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def step(self) -> float:
        self.step_num += 1
        return self.apply()

    def state_dict(self) -> dict:
        return {"step_num": self.step_num, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step_num = int(state["step_num"])
        self.apply()

"""Per-step schedules of the learning rate and the weight decay.

* ``cosine``: linear warm-up from ``warmup_lr`` to the base lr, then half-cosine decay to ``min_lr``
  over the remaining steps (SGDR, arXiv 1608.03983; timm's and DINO's per-iteration form).
* ``poly``: mmcv's ``PolyLrUpdaterHook`` as mmsegmentation uses it: ``(base - min_lr) * (1 - t / T)^power
  + min_lr`` with the decay running over *all* T iterations, warm-up included; during a linear warm-up
  of W steps the lr is that value times ``1 - (1 - t / W) * (1 - warmup_lr / base)``.
* ``step``: mmcv's ``StepLrUpdaterHook`` (mmdetection's 1x / 3x schedules): the base lr times ``gamma``
  for every milestone passed, with the same linear warm-up as ``poly``.
* ``constant``: the base lr after the warm-up.
* Weight decay: constant, or DINO's cosine from ``optim.weight_decay`` to ``sched.weight_decay_end``.

Every optimizer group carries ``lr_scale`` (layer decay, lr multipliers) and ``wd_scale`` (0 for
parameters without weight decay); :class:`StepSchedule` sets ``lr = lr(step) * lr_scale`` and
``weight_decay = wd(step) * wd_scale``. Its state is the step number.
"""
from __future__ import annotations

import math


def lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, warmup_lr: float = 1e-6,
          min_lr: float = 0.0) -> float:
    """Cosine schedule with linear warm-up: the lr for optimizer step ``step`` (0-based) of ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / decay_steps)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * t))


def poly_lr_at(step: int, total_steps: int, base_lr: float, warmup_steps: int = 0, warmup_lr: float = 0.0,
               min_lr: float = 0.0, power: float = 1.0) -> float:
    """mmcv's poly schedule (decay over all steps) with its linear warm-up (see the module docstring)."""
    t = min(1.0, step / max(1, total_steps))
    regular = (base_lr - min_lr) * (1 - t) ** power + min_lr
    if warmup_steps > 0 and step < warmup_steps:
        ratio = warmup_lr / base_lr if base_lr > 0 else 1.0
        return regular * (1 - (1 - step / warmup_steps) * (1 - ratio))
    return regular


def step_lr_at(step: int, base_lr: float, milestones, gamma: float = 0.1, warmup_steps: int = 0,
               warmup_lr: float = 0.0) -> float:
    """mmcv's step schedule: ``base * gamma ** (milestones passed)``; milestones in steps; mmcv's linear warm-up."""
    regular = base_lr * gamma ** sum(step >= m for m in milestones)
    if warmup_steps > 0 and step < warmup_steps:
        ratio = warmup_lr / base_lr if base_lr > 0 else 1.0
        return regular * (1 - (1 - step / warmup_steps) * (1 - ratio))
    return regular


def cosine_value(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` (step 0) towards ``end`` over ``total_steps`` (DINO's weight decay / momentum)."""
    t = min(1.0, step / max(1, total_steps))
    return end + 0.5 * (start - end) * (1 + math.cos(math.pi * t))


class StepSchedule:
    """Applies the lr and weight-decay schedules to an optimizer, one call per optimizer step."""

    def __init__(self, optimizer, *, name: str, base_lr: float, total_steps: int, warmup_steps: int = 0,
                 warmup_lr: float = 1e-6, min_lr: float = 0.0, power: float = 1.0, weight_decay: float = 0.0,
                 weight_decay_end: float | None = None, milestones=(), gamma: float = 0.1):
        if name not in ("cosine", "poly", "step", "constant"):
            raise ValueError(f"sched.name must be cosine, poly, step or constant, got {name!r}")
        self.milestones, self.gamma = tuple(int(m) for m in milestones), gamma
        self.optimizer, self.name, self.base_lr = optimizer, name, base_lr
        self.total_steps, self.warmup_steps, self.warmup_lr = total_steps, warmup_steps, warmup_lr
        self.min_lr, self.power = min_lr, power
        self.weight_decay, self.weight_decay_end = weight_decay, weight_decay_end
        self.step_num = 0
        self.apply()

    def lr(self, step: int) -> float:
        if self.name == "poly":
            return poly_lr_at(step, self.total_steps, self.base_lr, self.warmup_steps, self.warmup_lr, self.min_lr,
                              self.power)
        if self.name == "step":
            return step_lr_at(step, self.base_lr, self.milestones, self.gamma, self.warmup_steps, self.warmup_lr)
        if self.name == "constant":
            return lr_at(step, self.total_steps, self.base_lr, self.warmup_steps, self.warmup_lr, self.base_lr)
        return lr_at(step, self.total_steps, self.base_lr, self.warmup_steps, self.warmup_lr, self.min_lr)

    def wd(self, step: int) -> float:
        if self.weight_decay_end is None:
            return self.weight_decay
        return cosine_value(step, self.total_steps, self.weight_decay, self.weight_decay_end)

    def current(self) -> float:
        return self.lr(self.step_num)

    def apply(self) -> float:
        lr, wd = self.lr(self.step_num), self.wd(self.step_num)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
            g["weight_decay"] = wd * g.get("wd_scale", 1.0)
        return lr

    def step(self) -> float:
        self.step_num += 1
        return self.apply()

    def state_dict(self) -> dict:
        return {"step_num": self.step_num, "total_steps": self.total_steps}

    def load_state_dict(self, state: dict) -> None:
        self.step_num = int(state["step_num"])
        self.apply()

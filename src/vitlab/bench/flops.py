"""Multiply-add counts with ``torch.utils.flop_counter``.

Convention: GMACs = multiply-adds / 1e9, the unit the papers (and fvcore) report. PyTorch's
counter counts 2 FLOPs per multiply-add, so its numbers are halved here. It counts matrix
products and convolutions (incl. ``scaled_dot_product_attention``), not element-wise ops.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The CPU fused attention kernel is missing from torch's FLOP registry; count it like the GPU ones."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


_CPU_SDPA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops} \
    if hasattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu") else {}


def count_macs(model: nn.Module, *inputs, depth: int = 2) -> tuple[int, dict[str, int]]:
    """Return (total multiply-adds, {module path: multiply-adds}) for one forward pass.

    Module paths are cut at ``depth`` levels below the model ("network.0", "post_network.1", ...).
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=depth, custom_mapping=_CPU_SDPA)
    try:
        with counter, torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
    root = type(model).__name__
    totals = {name[len(root) + 1:]: sum(ops.values()) // 2 for name, ops in counter.get_flop_counts().items()
              if name.startswith(root + ".")}
    total = counter.get_total_flops() // 2
    return total, group_by_prefix(totals, total, depth)


def group_by_prefix(totals: dict[str, int], total: int, depth: int) -> dict[str, int]:
    """Turn inclusive per-module counts into exclusive ones and sum them by their first ``depth`` name parts.

    Containers that are iterated rather than called (a ``Sequential`` run block by block) are
    absent from the counter's listing; the nearest listed ancestor takes their place.
    """
    def nearest_children(parent: str | None) -> list[str]:
        below = [p for p in totals if parent is None or p.startswith(parent + ".")]
        return [p for p in below if not any(p.startswith(q + ".") for q in below if q != p)]

    grouped: dict[str, int] = {}
    for path, inclusive in totals.items():
        own = inclusive - sum(totals[c] for c in nearest_children(path))
        key = ".".join(path.split(".")[:depth])
        grouped[key] = grouped.get(key, 0) + own
    grouped["(other)"] = total - sum(totals[c] for c in nearest_children(None))
    return {k: v for k, v in grouped.items() if v}

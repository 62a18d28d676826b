"""Multiply-add counts with ``torch.utils.flop_counter``.

Convention: GMACs = multiply-adds / 1e9, the unit the papers (and fvcore) report. PyTorch's
counter counts 2 FLOPs per multiply-add, so its numbers are halved here. It counts matrix
products and convolutions (incl. ``scaled_dot_product_attention``), not element-wise ops.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, *inputs, depth: int = 2) -> tuple[int, dict[str, int]]:
    """Return (total multiply-adds, {module path: multiply-adds}) for one forward pass.

    Module paths are cut at ``depth`` levels below the model ("network.0", "post_network.1", ...).
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, depth=depth)
    try:
        with counter, torch.no_grad():
            model(*inputs)
    finally:
        model.train(was_training)
    counts = counter.get_flop_counts()
    root = type(model).__name__
    paths = {name[len(root) + 1:]: sum(ops.values()) // 2 for name, ops in counts.items()
             if name.startswith(root + ".")}
    cut = {p: v for p, v in paths.items() if p.count(".") < depth}
    # keep the deepest paths at the cut: a module whose children are also listed is not repeated
    leaves = {p: v for p, v in cut.items() if not any(q.startswith(p + ".") for q in cut)}
    return counter.get_total_flops() // 2, leaves

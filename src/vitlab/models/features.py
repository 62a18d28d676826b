"""Helpers for multi-scale feature extraction (``forward_intermediates`` / ``feature_info``)."""
from __future__ import annotations

from typing import Sequence


def feature_take_indices(num_features: int, indices: int | Sequence[int] | None) -> list[int]:
    """Normalise ``indices``: None -> all, int n -> the last n, a sequence -> those (negative allowed)."""
    if indices is None:
        return list(range(num_features))
    if isinstance(indices, int):
        if not 0 < indices <= num_features:
            raise ValueError(f"asked for the last {indices} feature maps, the model has {num_features}")
        return list(range(num_features - indices, num_features))
    out = []
    for i in indices:
        j = i + num_features if i < 0 else i
        if not 0 <= j < num_features:
            raise ValueError(f"feature index {i} out of range for a model with {num_features} feature maps")
        out.append(j)
    return sorted(set(out))


def feature_info_entry(channels: int, reduction: int, module: str) -> dict:
    return {"channels": int(channels), "reduction": int(reduction), "module": module}

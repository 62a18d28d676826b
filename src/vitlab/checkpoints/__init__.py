"""Reading, remapping and writing weights: official checkpoints, model folders, atomic files.

The names below load on first use, so ``vitlab.checkpoints.atomic`` (used by the command line) does not
import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {"CheckpointError": "load", "LoadReport": "load", "load_checkpoint": "load", "read_state_dict": "load",
            "unwrap_state_dict": "load", "from_pretrained": "hub", "save_pretrained": "hub", "load_model": "hub"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

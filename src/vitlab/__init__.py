"""vitlab: VOLO, Pale Transformer, UniFormer, SegViT and EsViT in one PyTorch package.

The public names below are loaded on first use (PEP 562), so ``import vitlab`` does not import
torch: the command line answers ``vitlab --help`` or ``vitlab models`` without it.
``from vitlab import create_model`` and ``vitlab.create_model(...)`` work as usual.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "create_model": "vitlab.models.registry",
    "list_models": "vitlab.models.registry",
    "register_family": "vitlab.models.registry",
    "register_model": "vitlab.models.registry",
    "load_checkpoint": "vitlab.checkpoints.load",
    "CheckpointError": "vitlab.checkpoints.load",
    "LoadReport": "vitlab.checkpoints.load",
    "from_pretrained": "vitlab.checkpoints.hub",
    "save_pretrained": "vitlab.checkpoints.hub",
}

__all__ = [*_LAZY, "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from .checkpoints.hub import from_pretrained, save_pretrained
    from .checkpoints.load import CheckpointError, LoadReport, load_checkpoint
    from .models.registry import create_model, list_models, register_family, register_model


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("_"):  # a sub-package (``vitlab.models``), imported on first access
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

"""Training checkpoints that resume exactly: model, EMA, optimizer, scheduler, scaler, RNG states, position.

Files are written atomically (temp file + rename), so a crash leaves the previous complete file.
Everything is stored as tensors and plain Python values, so loading uses ``weights_only=True``.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from vitlab.checkpoints.atomic import atomic_torch_save

LAST, BEST = "last.pth", "best.pth"


def rng_state() -> dict:
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap(model):
    model = getattr(model, "module", model)          # DDP
    return getattr(model, "_orig_mod", model)        # torch.compile


def save_training_state(path: str | Path, *, model, optimizer, scheduler, scaler, ema, epoch: int, step: int,
                        batch_in_epoch: int, extra: dict) -> None:
    state = {
        "model": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "state_dict_ema": ema.module.state_dict() if ema is not None else None,
        "ema_updates": int(ema.num_updates) if ema is not None else None,
        "rng": rng_state(),
        "epoch": epoch, "step": step, "batch_in_epoch": batch_in_epoch,
        **extra,
    }
    atomic_torch_save(state, path)


def load_training_state(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}; --resume expects a run folder with {LAST}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable training checkpoint ({type(e).__name__}: {e})") from e

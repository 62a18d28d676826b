"""The one training-state checkpoint format every task writes (``last.pth``, ``best.pth``).

A state holds everything a run needs to continue bit-exactly: the model, the EMA weights, the
optimizer, the schedule, the gradient scaler, the RNG streams of every process (Python, NumPy,
torch, CUDA), the position (epoch, optimizer step, samples consumed in the epoch), the engine's
running sums, and the task's own state (EsViT's teacher and loss centres) under its own top-level
keys. It is made of tensors and plain values only, so it loads with ``torch.load(weights_only=True)``,
and it is written atomically. The model weights sit under ``model`` (and the EMA under
``state_dict_ema``, EsViT's teacher under ``teacher``), where :func:`vitlab.load_checkpoint` finds them.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from vitlab.checkpoints.atomic import atomic_torch_save
from vitlab.errors import RunFolderError

FORMAT, VERSION = "vitlab.training_state", 2
LAST, BEST = "last.pth", "best.pth"
RESERVED = {"format", "version", "task", "model", "state_dict_ema", "ema_updates", "optimizer", "scheduler",
            "scaler", "rng", "epoch", "step", "samples_in_epoch", "engine", "meta"}


def rng_state() -> dict:
    """This process's RNG streams as tensors and plain values."""
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
    """The module inside DDP / torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def save_state(path: str | Path, state: dict) -> None:
    clash = RESERVED & set(state.get("task_state", {}))
    if clash:
        raise ValueError(f"task state keys {sorted(clash)} clash with the training-state format")
    extra = state.pop("task_state", {})
    atomic_torch_save({"format": FORMAT, "version": VERSION, **state, **extra}, path)


def load_state(path: str | Path) -> dict:
    """Read a training state; a folder means its ``last.pth``. Errors say what is wrong in one line."""
    path = Path(path)
    if path.is_dir():
        path = path / LAST
    if not path.is_file():
        raise RunFolderError(f"no training state at {path}; --resume expects a run folder with {LAST}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated or foreign files
        raise RunFolderError(f"{path} is not a readable training state ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200] if str(e) else 'truncated or corrupt'})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise RunFolderError(f"{path} is not a vitlab training state (no '{FORMAT}' marker); it cannot be resumed "
                             f"- use it to initialise a new run with --pretrained {path}")
    if state.get("version", 0) > VERSION:
        raise RunFolderError(f"{path} was written by a newer vitlab (format {state['version']}); upgrade vitlab")
    return state

"""Optional TensorBoard event files beside ``metrics.jsonl`` (``run.tensorboard: true``).

Rank 0 writes ``RUN/tensorboard/events.out.tfevents.*``: every ``train`` record's scalars (the loss and
its parts, ``lr``, ``images_per_s``) as ``train/<key>``, every ``epoch`` record's as ``epoch/<key>`` and
every ``eval`` record's metrics as ``eval/<key>``, each at the record's ``step``; at the end the run's
figures (``curves.png``, ``confusion.png``, ``overlays/``, ``predictions/``, ``figures/``) as images.
The records are the ones :class:`~vitlab.engine.metrics.MetricsLog` writes, so the two always agree.

A resumed run appends to the same folder with ``purge_step`` = the checkpoint's step + 1: TensorBoard
drops what the interrupted run logged after its checkpoint, as ``metrics.jsonl`` does, and no step
appears twice. The writer needs the ``tensorboard`` package (``pip install tensorboard`` or
``pip install 'vitlab[tensorboard]'``); :func:`require_tensorboard` says so before anything runs.
"""
from __future__ import annotations

import math
from pathlib import Path

from vitlab.errors import ConfigError

FOLDER = "tensorboard"
#: the figures a run may leave (single files, then folders of PNGs), with their TensorBoard tag prefixes
FIGURES = ("curves.png", "confusion.png")
FIGURE_FOLDERS = ("overlays", "predictions", "figures")
_NOT_SCALARS = ("kind", "step", "epoch")


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or a one-line ConfigError naming the install command."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ConfigError("run.tensorboard: true needs the tensorboard package: pip install tensorboard "
                          "(or pip install 'vitlab[tensorboard]')") from None
    return SummaryWriter


def scalars(record: dict) -> dict[str, float]:
    """The numeric entries of a record (booleans, strings, lists and nulls left out)."""
    return {k: float(v) for k, v in record.items()
            if k not in _NOT_SCALARS and isinstance(v, (int, float)) and not isinstance(v, bool)}


class TensorBoardLog:
    """A SummaryWriter fed with ``metrics.jsonl`` records; ``resume_step``: purge what came after it."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        writer = require_tensorboard()
        self.folder = Path(run_dir) / FOLDER
        self.folder.mkdir(parents=True, exist_ok=True)
        purge = resume_step + 1 if resume_step is not None else None
        self.writer = writer(log_dir=str(self.folder), purge_step=purge)

    def write(self, record: dict) -> None:
        kind, step = record.get("kind"), record.get("step")
        if kind not in ("train", "epoch", "eval") or not isinstance(step, int):
            return
        for key, value in scalars(record).items():
            if math.isfinite(value):        # metrics.jsonl writes these as null
                self.writer.add_scalar(f"{kind}/{key}", value, global_step=step)
        self.writer.flush()     # a crash keeps everything up to the last record, as metrics.jsonl does

    def add_figures(self, run_dir: str | Path, step: int) -> list[str]:
        """The run's figures that exist, as images at ``step``; returns their tags."""
        run_dir, tags = Path(run_dir), []
        paths = [(Path(name).stem, run_dir / name) for name in FIGURES]
        for folder in FIGURE_FOLDERS:
            if (run_dir / folder).is_dir():
                paths += [(f"{folder}/{p.stem}", p) for p in sorted((run_dir / folder).glob("*.png"))]
        for tag, path in paths:
            if path.is_file():
                self.writer.add_image(tag, _read_rgb(path), global_step=step, dataformats="HWC")
                tags.append(tag)
        self.writer.flush()
        return tags

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _read_rgb(path: Path):
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))

"""What a task gives the engine: a recipe that builds (model, data, loss), runs one step and evaluates.

The engine (:mod:`vitlab.engine.loop`) owns everything else: device, DDP, autocast, accumulation,
clipping, EMA, schedules, the NaN guard, progress, metrics, checkpoints and resume. A task
subclasses :class:`Task` and fills in:

* ``name``, ``sections`` (its own typed config sections), ``defaults`` (its values for the shared
  ones), ``monitor`` (the metric that picks ``best.pth``, larger is better);
* :meth:`build` - create ``self.model`` (the module whose weights train and are saved),
  ``self.train_set`` (seeded dataset items) and whatever evaluation needs;
* :meth:`train_step` - one micro-batch: forward through ``module`` (the DDP/compile-wrapped
  :meth:`train_module`) and the loss; returns the loss and named parts to log;
* optional hooks around the optimizer step (EsViT: frozen last layer, teacher EMA);
* :meth:`evaluate` - metrics of a model (every rank takes part under torchrun);
* :meth:`finish` - the run's artefacts (``model/``, figures, reports);
* :meth:`state_dict` / :meth:`load_state_dict` - the task's own state in the training checkpoint.
"""
from __future__ import annotations

from typing import Any, ClassVar

from torch import nn


class Task:
    name: ClassVar[str] = ""
    help: ClassVar[str] = ""
    sections: ClassVar[dict] = {}
    defaults: ClassVar[dict] = {}
    monitor: ClassVar[str | None] = None
    ddp_find_unused: ClassVar[bool] = False   # some parameters get no gradient in a step (detection backbones' heads)

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self.train_set = None
        self.class_names: list[str] = []
        self.info: dict[str, Any] = {}

    # --- building ------------------------------------------------------------------------------
    def build(self, session) -> None:
        """Create ``self.model`` and ``self.train_set`` from ``session.cfg`` (see :class:`~vitlab.engine.loop.Session`)."""
        raise NotImplementedError

    def collate_fn(self):
        """How the training loader batches items: None for :func:`vitlab.data.folder.collate_skipping`; a task with
        ragged targets (detection) gives its own, returning the same ``(inputs, targets, skipped names)`` triple."""
        return None

    def train_module(self) -> nn.Module:
        """The module DDP wraps; its ``forward`` is what :meth:`train_step` calls. Default: the model."""
        return self.model

    def describe(self, session) -> str:
        """The first log line: model, input and data."""
        n = sum(p.numel() for p in self.model.parameters())
        return f"model {session.cfg['model']['name']}: {n / 1e6:.3f}M params; task {self.name}"

    def data_record(self) -> dict:
        """Facts about the data for the first ``metrics.jsonl`` record."""
        return {k: v for k, v in self.info.items() if isinstance(v, (int, float, str))}

    # --- stepping --------------------------------------------------------------------------------
    def train_step(self, module: nn.Module, batch, session):
        """Forward + loss for one micro-batch: returns ``(loss, {part: tensor or float})``."""
        raise NotImplementedError

    def batch_size_of(self, batch) -> int:
        x = batch[0]
        while isinstance(x, (list, tuple)):
            x = x[0]
        return int(x.shape[0])

    def after_backward(self, session) -> None:
        """After the backward of a micro-batch whose loss was accepted (finite)."""

    def before_optimizer_step(self, session) -> None:
        """After backward, unscaling and clipping, before ``optimizer.step()``."""

    def after_optimizer_step(self, session) -> None:
        """After ``optimizer.step()`` and the EMA update."""

    # --- evaluating and finishing ----------------------------------------------------------------
    def evaluate(self, session, model: nn.Module) -> dict | None:
        """Metrics of ``model`` (percent where a percentage), or None when the task has nothing to measure."""
        return None

    def eval_line(self, metrics: dict) -> str:
        """How an evaluation reads in the console."""
        return " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()
                        if isinstance(v, (int, float)))

    def finish(self, session, last_eval: dict | None) -> dict:
        """Write the run's artefacts (rank 0 only); return the summary ``fit`` returns and prints."""
        return {}

    def summary_line(self, summary: dict) -> str:
        return f"done -> {summary.get('output')}"

    # --- checkpoint state ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Receives the whole training state (the task's keys are at its top level)."""

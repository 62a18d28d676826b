"""The tasks ``vitlab train --task NAME`` runs, each a small recipe on the one engine.

:data:`TASKS` is the explicit list (module, class): nothing registers itself on import. A plug-in
adds one with :func:`register_task`. :func:`make_config` builds a task's run configuration from
its typed sections and layers of overrides (see :mod:`vitlab.engine.config`).
"""
from __future__ import annotations

import difflib
import importlib
import time

from vitlab.engine.config import compose
from vitlab.engine.schema import COMMON_SECTIONS
from vitlab.errors import ConfigError

TASKS: dict[str, tuple[str, str]] = {
    "classification": ("vitlab.tasks.classification", "ClassificationTask"),
    "video": ("vitlab.tasks.video", "VideoTask"),
    "segmentation": ("vitlab.tasks.segmentation", "SegmentationTask"),
    "pretraining": ("vitlab.tasks.pretraining", "PretrainingTask"),
    "detection": ("vitlab.tasks.detection", "DetectionTask"),
    "pose": ("vitlab.tasks.pose", "PoseTask"),
}
_PLUGINS: dict[str, type] = {}


def register_task(cls: type) -> type:
    """Add a :class:`~vitlab.engine.task.Task` subclass under ``cls.name`` (usable as a decorator)."""
    if not getattr(cls, "name", ""):
        raise ValueError("a task class needs a name")
    if cls.name in TASKS:
        raise ValueError(f"task name {cls.name!r} is built in; choose another name")
    _PLUGINS[cls.name] = cls
    return cls


def list_tasks() -> list[str]:
    return sorted([*TASKS, *_PLUGINS])


def task_class(name: str) -> type:
    if name in _PLUGINS:
        return _PLUGINS[name]
    if name not in TASKS:
        close = difflib.get_close_matches(name, list_tasks(), n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise ConfigError(f"unknown task {name!r}{hint} Available: {', '.join(list_tasks())}")
    module, attr = TASKS[name]
    return getattr(importlib.import_module(module), attr)


def create_task(name: str):
    return task_class(name)()


def sections_of(cls: type) -> dict:
    return {**COMMON_SECTIONS, **cls.sections}


def make_config(task: str, layers: list[tuple[str, dict]]) -> dict:
    """The task's typed defaults <- ``layers`` (``(source, mapping)``, later wins), checked; ``run.output`` filled in."""
    cls = task_class(task)
    cfg = compose(sections_of(cls), [(f"the {task} task's defaults", cls.defaults), *layers])
    cfg["task"] = task
    if not cfg["run"]["output"]:
        data = str(cfg["data"]["name"]).replace("/", "_").replace(":", "_").strip("_")[-40:]
        cfg["run"]["output"] = f"runs/{cfg['model']['name']}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
    return cfg


def fit(cfg: dict, *, resume=None, overwrite: bool = False) -> dict:
    """Run the configured task on the engine (see :func:`vitlab.engine.loop.fit`)."""
    from vitlab.engine.loop import fit as engine_fit
    return engine_fit(cfg, create_task(cfg["task"]), resume=resume, overwrite=overwrite)

"""Dataset and task registry: how other parts of vitlab (and user code) plug into ``vitlab train/eval``.

Datasets
--------
``register_dataset(name, builder, input_kind="image", help="")`` makes ``--data NAME`` (or
``--data NAME:PATH``) available to ``vitlab train`` and ``vitlab eval``. A *builder* is called as
``builder(request)`` with a :class:`DataRequest` and returns a :class:`DatasetBundle`::

    from vitlab.data.registry import DatasetBundle, register_dataset

    def build_my_clips(req):                    # req.root, req.input_size, req.seed, req.options, ...
        train = MyClipDataset(req.root, "train", transform=req.train_transform)
        val = MyClipDataset(req.root, "val", transform=req.eval_transform)
        return DatasetBundle(train=train, val=val, class_names=train.classes, input_kind="video")

    register_dataset("my-clips", build_my_clips, input_kind="video")

Each dataset item is ``(input, target)``; ``input`` is a float tensor (``(C, H, W)`` images,
``(C, T, H, W)`` clips, or ``(V, C, T, H, W)`` for several evaluation views), ``target`` an int
class index. The train set may instead receive ``(index, seed)`` keys when it sets
``seeded = True`` (see :class:`vitlab.data.datasets.SeededDataset`), which makes augmentation
reproducible and resumes exact. ``DatasetBundle.predict`` replaces ``model(x)`` during
evaluation (e.g. averaging the logits of several clip views); classification metrics are
computed from what it returns.

Tasks
-----
``register_task(name, train=None, evaluate=None, defaults=None)`` adds a ``--task NAME`` value.
``train(config: dict) -> int`` and ``evaluate(config: dict) -> int`` receive the merged run
configuration (YAML + command line, see :mod:`vitlab.engine.config`). A task without its own
``train``/``evaluate`` runs the classification loop with ``defaults`` merged under the
configuration (video classification is classification on clips: it only needs a dataset
builder and, optionally, ``defaults={"data": {"name": "my-clips"}}``).

Modules register themselves on import; the registry imports every module of
:mod:`vitlab.data`, :mod:`vitlab.segmentation` and :mod:`vitlab.engine` the first time a name
is looked up (a module that fails to import is reported when its name is asked for).
"""
from __future__ import annotations

import difflib
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

INPUT_KINDS = ("image", "video", "mask")
PLUGIN_PACKAGES = ("vitlab.data", "vitlab.engine", "vitlab.segmentation")


@dataclass
class DataRequest:
    """What ``vitlab train/eval`` asks a dataset builder for."""
    name: str                                   # the registered name (``--data NAME[:PATH]``)
    root: str | None = None                     # PATH part of ``--data NAME:PATH`` or ``data.root``
    input_size: tuple[int, ...] = (3, 224, 224)  # what the model expects, (C, H, W) or (C, T, H, W)
    train_transform: Callable | None = None     # ``transform(uint8/float CHW tensor, generator) -> tensor``
    eval_transform: Callable | None = None
    seed: int = 0
    splits: tuple[str, ...] = ("train", "val")  # which splits are needed (eval asks only for "val")
    options: dict[str, Any] = field(default_factory=dict)  # the free-form ``data:`` section


@dataclass
class DatasetBundle:
    """What a dataset builder returns."""
    train: Any | None
    val: Any | None
    class_names: list[str]
    input_kind: str = "image"
    in_chans: int | None = None                 # channels of the inputs (1 for grayscale built-ins)
    mean: tuple[float, ...] | None = None       # normalisation to use instead of the model's pretrained_cfg
    std: tuple[float, ...] | None = None
    predict: Callable | None = None             # ``predict(model, inputs) -> logits`` for evaluation
    info: dict[str, Any] = field(default_factory=dict)  # reported in the log (duplicates moved, files skipped)

    def __post_init__(self):
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")
        if not self.class_names:
            raise ValueError("a dataset needs at least one class name")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclass
class DatasetEntry:
    name: str
    builder: Callable[[DataRequest], DatasetBundle]
    input_kind: str
    help: str


@dataclass
class TaskEntry:
    name: str
    train: Callable[[dict], int] | None
    evaluate: Callable[[dict], int] | None
    defaults: dict[str, Any]
    help: str


_DATASETS: dict[str, DatasetEntry] = {}
_TASKS: dict[str, TaskEntry] = {}
_IMPORT_ERRORS: dict[str, str] = {}
_LOADED = False


def register_dataset(name: str, builder: Callable[[DataRequest], DatasetBundle], input_kind: str = "image",
                     help: str = "") -> None:
    """Make ``--data NAME`` available; ``builder(DataRequest) -> DatasetBundle``."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    if name in _DATASETS and _DATASETS[name].builder is not builder:
        raise ValueError(f"dataset name {name!r} is registered twice")
    _DATASETS[name] = DatasetEntry(name, builder, input_kind, help)


def register_task(name: str, train: Callable[[dict], int] | None = None,
                  evaluate: Callable[[dict], int] | None = None, defaults: dict | None = None, help: str = "") -> None:
    """Make ``--task NAME`` available (see the module docstring)."""
    if name in _TASKS and (_TASKS[name].train, _TASKS[name].evaluate) != (train, evaluate):
        raise ValueError(f"task name {name!r} is registered twice")
    _TASKS[name] = TaskEntry(name, train, evaluate, dict(defaults or {}), help)


def _load_plugins() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for package_name in PLUGIN_PACKAGES:
        try:
            package = importlib.import_module(package_name)
        except Exception as e:  # pragma: no cover - a broken package is reported on lookup
            _IMPORT_ERRORS[package_name] = f"{type(e).__name__}: {e}"
            continue
        for info in pkgutil.iter_modules(package.__path__):
            module = f"{package_name}.{info.name}"
            try:
                importlib.import_module(module)
            except Exception as e:
                _IMPORT_ERRORS[module] = f"{type(e).__name__}: {e}"


def _unknown(kind: str, name: str, known: list[str]) -> KeyError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    msg = f"unknown {kind} {name!r}"
    if close:
        msg += f"; did you mean {', '.join(close)}?"
    msg += f" Available: {', '.join(sorted(known)) or 'none'}."
    if _IMPORT_ERRORS:
        msg += " Modules that failed to import: " + "; ".join(f"{m} ({e})" for m, e in _IMPORT_ERRORS.items())
    return _RegistryKeyError(msg)


class _RegistryKeyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def list_datasets() -> list[str]:
    _load_plugins()
    return sorted(_DATASETS)


def list_tasks() -> list[str]:
    _load_plugins()
    return sorted(_TASKS)


def get_dataset_entry(name: str) -> DatasetEntry:
    _load_plugins()
    if name not in _DATASETS:
        raise _unknown("dataset", name, list(_DATASETS))
    return _DATASETS[name]


def get_task(name: str) -> TaskEntry:
    _load_plugins()
    if name not in _TASKS:
        raise _unknown("task", name, list(_TASKS))
    return _TASKS[name]


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``"animal-mnist"`` -> (name, None); ``"folder:path/to/imgs"`` -> ("folder", path); a bare path -> folder."""
    _load_plugins()
    if spec in _DATASETS:
        return spec, None
    if ":" in spec:
        name, root = spec.split(":", 1)
        if name in _DATASETS:
            return name, root
    import os
    if os.path.isdir(spec):
        return "folder", spec
    if os.path.exists(spec):
        raise ValueError(f"--data {spec!r} is a file; expected a registered dataset name or an image folder")
    raise _unknown("dataset", spec, list(_DATASETS))


def build_dataset(request: DataRequest) -> DatasetBundle:
    """Look up ``request.name`` and call its builder, checking what it returns."""
    entry = get_dataset_entry(request.name)
    bundle = entry.builder(request)
    if not isinstance(bundle, DatasetBundle):
        raise TypeError(f"dataset builder for {request.name!r} returned {type(bundle).__name__}, "
                        f"expected a DatasetBundle")
    return bundle

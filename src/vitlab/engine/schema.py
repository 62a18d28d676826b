"""Typed configuration fields: every key a run configuration may hold, its type, range and default.

A section is a ``{key: Field}`` dict; :func:`check_value` refuses a value of the wrong type naming the
key and the expected type, so ``--set optim.lr=abc`` or ``optim.weight_decay: [1, 2]`` stop before
anything runs. The sections every task shares are in :data:`COMMON_SECTIONS`; a task adds its own
(``aug`` for classification, ``seg`` for segmentation, ``esvit`` for pretraining).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vitlab.errors import ConfigError

KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
              "list": "a list", "dict": "a mapping", "any": "any value"}


@dataclass(frozen=True)
class Field:
    """One configuration key. ``kind``: int, float, bool, str, list, dict or any."""
    default: Any
    kind: str
    optional: bool = False          # None (YAML null) is allowed
    choices: tuple = ()
    low: float | None = None        # smallest allowed value (numbers, and list items)
    high: float | None = None
    length: int | None = None       # exact list length
    item: str | None = None         # kind of the list items
    doc: str = ""


def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _scalar(value, kind: str, path: str, field: Field):
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "bool": isinstance(value, bool), "str": isinstance(value, str)}[kind]
    if not ok:
        raise ConfigError(f"{path}: expected {KIND_NAMES[kind]}, got {value!r} ({_type_name(value)})")
    if kind == "float":
        value = float(value)
    if field.low is not None and value < field.low:
        raise ConfigError(f"{path}: must be at least {field.low:g}, got {value!r}")
    if field.high is not None and value > field.high:
        raise ConfigError(f"{path}: must be at most {field.high:g}, got {value!r}")
    return value


def check_value(value, field: Field, path: str):
    """``value`` converted to the field's type (ints become floats where numbers are expected), or ConfigError."""
    if value is None:
        if field.optional:
            return None
        raise ConfigError(f"{path}: expected {KIND_NAMES[field.kind]}, got null")
    if field.choices:
        if value not in field.choices:
            shown = ", ".join("null" if c is None else str(c) for c in field.choices)
            raise ConfigError(f"{path}: must be one of {shown}, got {value!r}")
        return value
    if field.kind == "any":
        return value
    if field.kind == "dict":
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping (key: value), got {value!r} ({_type_name(value)})")
        return dict(value)
    if field.kind == "list":
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r} ({_type_name(value)})")
        if field.length is not None and len(value) != field.length:
            raise ConfigError(f"{path}: expected a list of {field.length} values, got {len(value)}: {list(value)}")
        if field.item:
            value = [_scalar(v, field.item, f"{path}[{i}]", field) for i, v in enumerate(value)]
        return list(value)
    return _scalar(value, field.kind, path, field)


def F(default, kind: str, **kw) -> Field:  # noqa: N802  (short constructor for the tables below)
    return Field(default, kind, **kw)


PAIR = dict(kind="list", length=2, item="float")

COMMON_SECTIONS: dict[str, dict[str, Field]] = {
    "model": {
        "name": F("volo_micro", "str", doc="a registered variant or family name (vitlab models)"),
        "kwargs": F({}, "dict", doc="constructor arguments for create_model (img_size, patch_size, ...)"),
        "pretrained": F(None, "str", optional=True, doc="a local checkpoint or model folder to start from"),
        "drop_path": F(None, "float", optional=True, low=0.0, high=1.0, doc="drop_path_rate override"),
        "grad_checkpointing": F(False, "bool"),
        "channels_last": F(False, "bool"),
        "compile": F(False, "bool", doc="torch.compile the training module"),
        "sync_bn": F(True, "bool", doc="SyncBatchNorm under DDP on GPUs (CPU ranks keep per-process statistics)"),
        "freeze_bn": F(False, "bool", doc="BatchNorm uses its running statistics and never updates them"),
    },
    "data": {
        "name": F("animal-mnist", "str", doc="a dataset name, name:PATH, or a folder path"),
        "root": F(None, "str", optional=True),
        "img_size": F(None, "int", optional=True, low=1, doc="input side (default: the model's)"),
        "batch_size": F(64, "int", low=1, doc="per process; global batch = batch_size x processes x accum_steps"),
        "eval_batch_size": F(256, "int", low=1),
        "workers": F(0, "int", low=0, doc="DataLoader worker processes"),
        "options": F({}, "dict", doc="dataset-specific options (held_out, val_fraction, split_seed, train_limit, ...)"),
    },
    "optim": {
        "name": F("adamw", "str", choices=("adamw", "sgd")),
        "lr": F(1e-3, "float", low=0.0),
        "lr_base_batch": F(None, "int", optional=True, low=1,
                           doc="lr is given for this global batch and scaled linearly to the real one"),
        "weight_decay": F(0.05, "float", low=0.0),
        "betas": F([0.9, 0.999], **PAIR),
        "eps": F(1e-8, "float", low=0.0),
        "momentum": F(0.9, "float", low=0.0, high=1.0, doc="SGD momentum"),
        "layer_decay": F(None, "float", optional=True, low=0.0, high=1.0, doc="layer-wise lr decay, e.g. 0.75"),
        "lr_mult": F({}, "dict", doc="lr multipliers by parameter-name prefix, e.g. {decode_head: 10}"),
        "no_decay_from_model": F(True, "bool", doc="also skip weight decay on model.no_weight_decay()"),
        "clip_grad": F(None, "float", optional=True, low=0.0, doc="gradient clipping threshold"),
        "clip_mode": F("norm", "str", choices=("norm", "per_param"),
                       doc="norm: one global norm (timm); per_param: each parameter's norm (DINO)"),
        "accum_steps": F(1, "int", low=1, doc="micro-batches per optimizer step"),
    },
    "sched": {
        "name": F("cosine", "str", choices=("cosine", "poly", "step", "constant")),
        "epochs": F(10, "int", low=1),
        "steps": F(None, "int", optional=True, low=1, doc="schedule length in optimizer steps (instead of epochs)"),
        "max_steps": F(None, "int", optional=True, low=1, doc="stop after this many steps (schedule unchanged)"),
        "warmup_epochs": F(1.0, "float", low=0.0),
        "warmup_steps": F(None, "int", optional=True, low=0, doc="warm-up in steps (instead of warmup_epochs)"),
        "warmup_lr": F(1e-6, "float", low=0.0, doc="cosine: lr at step 0; poly: ratio of the lr at step 0"),
        "min_lr": F(1e-5, "float", low=0.0),
        "power": F(1.0, "float", low=0.0, doc="poly decay exponent"),
        "milestones": F([], "list", item="float", low=0.0, doc="step: epochs at which the lr is multiplied by gamma"),
        "gamma": F(0.1, "float", low=0.0, doc="step: the factor at each milestone"),
        "weight_decay_end": F(None, "float", optional=True, low=0.0,
                              doc="cosine weight-decay schedule from optim.weight_decay to this value"),
    },
    "ema": {
        "enabled": F(False, "bool"),
        "decay": F(0.9998, "float", low=0.0, high=1.0),
        "warmup": F(True, "bool"),
    },
    "amp": {
        "dtype": F(None, "str", optional=True, choices=(None, "bf16", "fp16")),
        "fp32_fallback": F(True, "bool", doc="redo a step whose loss is not finite in fp32 and stay in fp32"),
    },
    "run": {
        "output": F(None, "str", optional=True, doc="run folder (default runs/<model>-<data>-<time>)"),
        "seed": F(0, "int", low=0),
        "device": F("auto", "str", choices=("auto", "cpu", "cuda")),
        "threads": F(None, "int", optional=True, low=1),
        "log_every": F(50, "int", low=1, doc="optimizer steps between train records"),
        "checkpoint_every": F(0, "int", low=0, doc="steps between mid-epoch last.pth (0: epoch ends only)"),
        "eval_every": F(1, "int", low=0, doc="epochs between evaluations (0: at the end only)"),
        "eval_every_steps": F(0, "int", low=0, doc="steps between evaluations (0: use eval_every)"),
        "keep_every": F(0, "int", low=0, doc="also keep checkpoint-<epoch>.pth every N epochs"),
        "progress": F("auto", "str", choices=("auto", "bar", "log")),
        "plots": F(True, "bool"),
        "detect_anomaly": F(False, "bool"),
        "tensorboard": F(False, "bool", doc="also write TensorBoard event files under RUN/tensorboard/ (rank 0): "
                                            "train/epoch/eval scalars at their steps, the figures at the end; "
                                            "needs pip install tensorboard"),
    },
}


def section_defaults(section: dict[str, Field]) -> dict:
    import copy
    return {k: copy.deepcopy(f.default) for k, f in section.items()}

"""What every ``vitlab`` sub-command shares: flag names, model loading and the user-error convention.

Flags have one spelling everywhere (:data:`FLAGS`): a command picks the ones it takes with
:func:`add_flags`. A model argument is a registered name, a model folder (``config.json`` +
``model.safetensors``) or a training run folder (its ``model/``): :func:`load_model`. Errors a user
can fix (:data:`USER_ERRORS`) are printed by :mod:`vitlab.cli.main` as one line
``vitlab <command>: error: ...`` on stderr with exit code 2; ``--debug`` shows the traceback.

Nothing here imports torch: ``vitlab --help`` stays fast.
"""
from __future__ import annotations

import argparse

from vitlab.errors import VitlabError

MODEL_HELP = "a registered name (vitlab models), a model folder (config.json + model.safetensors) or a run folder"

# name -> (option strings, argparse keyword arguments); the destination is the name
FLAGS: dict[str, tuple[tuple[str, ...], dict]] = {
    "config": (("--config",), dict(metavar="FILE", help="YAML recipe (any subset of the config sections)")),
    "set": (("--set",), dict(action="append", default=[], metavar="KEY=VALUE",
                             help="override a config key, e.g. --set optim.lr=3e-4 (value parsed as YAML)")),
    "preset": (("--preset",), dict(metavar="NAME", help="start from a preset in configs/ (vitlab train "
                                                       "--list-presets); the recipe file and flags still win")),
    "output": (("--output", "-o"), dict(metavar="DIR", help="output folder")),
    "resume": (("--resume",), dict(metavar="RUN_DIR", help="continue the run in RUN_DIR exactly where it stopped")),
    "overwrite": (("--overwrite",), dict(action="store_true", help="replace the contents of an existing output folder")),
    "img_size": (("--img-size",), dict(type=int, metavar="N", help="input side in pixels")),
    "batch_size": (("--batch-size",), dict(type=int, metavar="N", help="batch size (per process under torchrun)")),
    "device": (("--device",), dict(choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")),
    "threads": (("--threads",), dict(type=int, metavar="N", help="torch CPU threads")),
    "json": (("--json",), dict(action="store_true", help="print the result as JSON")),
    "model": (("--model",), dict(metavar="MODEL", help=MODEL_HELP)),
    "checkpoint": (("--checkpoint",), dict(metavar="FILE", help="weights to load (.pth/.pth.tar/.safetensors/.bin, "
                                                                 "a model or run folder), strict")),
    "data": (("--data",), dict(metavar="DATA", help="dataset: a built-in name (animal-mnist, digits, ...), "
                                                    "folder:PATH or PATH")),
    "seed": (("--seed",), dict(type=int, help="random seed")),
    "workers": (("--workers",), dict(type=int, metavar="N", help="data-loading worker processes")),
    "amp": (("--amp",), dict(choices=("bf16", "fp16"), help="autocast precision (fp16 adds a gradient scaler)")),
    "progress": (("--progress",), dict(choices=("auto", "bar", "log"),
                                       help="auto: a bar on a terminal, plain lines when piped")),
}


def add_flags(parser: argparse.ArgumentParser, *names: str, **overrides: dict) -> None:
    """Add the shared flags ``names`` to ``parser``; ``overrides[name]`` changes their keyword arguments."""
    for name in names:
        strings, kwargs = FLAGS[name]
        parser.add_argument(*strings, dest=name, **{**kwargs, **overrides.get(name, {})})


def set_threads(threads: int | None) -> None:
    """``--threads N``: torch's intra-op threads (left alone when not given)."""
    if threads:
        if threads < 1:
            raise VitlabError(f"--threads must be at least 1, got {threads}")
        import torch
        torch.set_num_threads(int(threads))


def load_model(spec: str, checkpoint: str | None = None, **overrides):
    """A model given as a registered name, a model folder or a run folder (eval mode); see MODEL_HELP."""
    from vitlab.checkpoints.hub import load_model as load
    return load(spec, checkpoint, **overrides)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (printed as one line) rather than a bug in vitlab."""
    from vitlab.checkpoints.load import CheckpointError
    from vitlab.models.registry import UnknownModelError
    return (VitlabError, CheckpointError, UnknownModelError, ValueError, FileNotFoundError, PermissionError,
            IsADirectoryError, NotADirectoryError, OSError, TypeError, KeyError)


# --- run configurations from the command line --------------------------------------------------------

def flag_layer(args, flags: dict[str, str], switches: dict[str, tuple[str, object]] | None = None) -> dict:
    """The config keys of the flags that were given (a flag left out - None - sets nothing).

    ``flags``: argparse destination -> dotted config key; ``switches``: destination -> (key, value set
    when the switch is on)."""
    from vitlab.engine.config import put
    layer: dict = {}
    for dest, key in flags.items():
        value = getattr(args, dest, None)
        if value is not None:
            put(layer, key, list(value) if isinstance(value, tuple) else value)
    for dest, (key, value) in (switches or {}).items():
        if getattr(args, dest, None):
            put(layer, key, value)
    return layer


def run_config(args, *, task: str | None, flags: dict[str, str], switches: dict | None = None,
               extra: dict | None = None) -> dict:
    """The run configuration of a training command: the task's defaults <- ``--preset`` <- ``--config`` (or, with
    ``--resume``, the run's own ``config.yaml``) <- the flags given <- ``extra`` <- ``--set``."""
    from pathlib import Path

    from vitlab.engine.config import load_yaml, parse_set, preset_path
    from vitlab.tasks import make_config
    layers: list[tuple[str, dict]] = []
    file = getattr(args, "config", None)
    if getattr(args, "resume", None):
        saved = Path(args.resume) / "config.yaml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume {args.resume}: no config.yaml there (is it a vitlab run folder?)")
        if file:
            raise VitlabError("--resume continues a run with its own config.yaml; leave out --config")
        file = saved
    recipe = load_yaml(file) if file else {}
    chosen = getattr(args, "task", None) or task or recipe.get("task") or "classification"
    if recipe.get("task") not in (None, chosen):
        raise VitlabError(f"{file} is a {recipe['task']!r} recipe, not {chosen!r}")
    for name in ([args.preset] if getattr(args, "preset", None) else []):
        path = preset_path(name, chosen)
        layers.append((f"preset {path}", load_yaml(path)))
    if file:
        layers.append((str(file), recipe))
    layers.append(("the command line", flag_layer(args, flags, switches)))
    if extra:
        layers.append(("the command line", extra))
    layers.append(("--set", parse_set(getattr(args, "set", None))))
    cfg = make_config(chosen, layers)
    if getattr(args, "resume", None):
        cfg["run"]["output"] = str(Path(args.resume))
    return cfg


def train_and_report(cfg: dict, args) -> int:
    """Run ``cfg`` on the engine; print the summary as JSON with ``--json``."""
    from vitlab.checkpoints.atomic import to_json
    from vitlab.tasks import fit
    summary = fit(cfg, resume=getattr(args, "resume", None), overwrite=bool(getattr(args, "overwrite", False)))
    if getattr(args, "json", False) and summary:
        print(to_json({k: v for k, v in summary.items() if k not in ("per_class", "confusion")}, indent=2))
    return 0


def pair(text: str) -> tuple[float, float]:
    """``"0.4,1.0"`` -> (0.4, 1.0) for flags that take two numbers."""
    try:
        a, b = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two comma-separated numbers like 0.4,1.0, got {text!r}")
    return a, b

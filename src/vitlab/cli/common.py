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

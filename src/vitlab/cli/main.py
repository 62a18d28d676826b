"""The ``vitlab`` command. Each sub-command is a module in this package exposing

``COMMAND`` (its name), ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import vitlab


def _command_modules():
    import vitlab.cli as pkg
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name in ("main", "__main__", "common"):
            continue
        module = importlib.import_module(f"vitlab.cli.{info.name}")
        if hasattr(module, "COMMAND"):
            yield module


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vitlab", description="Vision transformers: VOLO, Pale, UniFormer, "
                                     "SegViT, EsViT - models, checkpoints, training, benchmarks.")
    parser.add_argument("--version", action="version", version=f"vitlab {vitlab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        p = sub.add_parser(module.COMMAND, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (vitlab.CheckpointError, ValueError, FileNotFoundError, KeyError, TypeError) as e:
        if getattr(args, "debug", False):
            raise
        print(f"vitlab {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

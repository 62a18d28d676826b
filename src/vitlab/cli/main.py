"""The ``vitlab`` command. Each sub-command is a module in this package exposing

``COMMAND`` (its name), ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``.

Start-up stays cheap: the command list below is static, only the module of the command being run
is imported (``vitlab --help`` reads the help lines from the sources), and command modules import
torch inside functions, never at module level.

Errors a user can fix (:func:`vitlab.cli.common.user_errors`) print one line
``vitlab <command>: error: <message>`` on stderr and exit with the exception's ``exit_code``
(2 by default); ``--debug``, before or after the command, shows the traceback instead.
Ctrl-C prints ``interrupted`` and exits with 130.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Iterable

from vitlab import __version__

# (command, module in vitlab.cli); add a new command here
COMMANDS: tuple[tuple[str, str], ...] = (
    ("bench", "bench"),
    ("correspondence", "correspondence"),
    ("dense-probe", "dense_probe"),
    ("detect", "detect"),
    ("eval", "eval"),
    ("export", "export"),
    ("flops", "flops"),
    ("info", "info"),
    ("knn", "knn"),
    ("linear-probe", "linear_probe"),
    ("models", "models"),
    ("pose", "pose"),
    ("predict", "predict"),
    ("pretrain", "pretrain"),
    ("segment", "segment"),
    ("token-labels", "token_labels"),
    ("train", "train"),
    ("weights", "weights"),
)
DEBUG_HELP = "show the full traceback instead of a one-line error"


def command_module(command: str):
    """The module implementing ``command`` (imported on demand)."""
    return importlib.import_module(f"vitlab.cli.{dict(COMMANDS)[command]}")


def command_help(command: str) -> str:
    """A command's ``HELP`` line, read from its module's source without running it (so without torch)."""
    import ast
    import importlib.util
    name = f"vitlab.cli.{dict(COMMANDS)[command]}"
    try:
        tree = ast.parse(importlib.util.find_spec(name).loader.get_source(name))
        for node in tree.body:
            if isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets] == ["HELP"]:
                return ast.literal_eval(node.value)
    except (AttributeError, ImportError, OSError, SyntaxError, ValueError):
        pass
    return command_module(command).HELP  # not a plain string literal: import the module


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The ``vitlab`` parser. Every command is listed; only those in ``commands`` (all when None) get
    their arguments, which imports their modules. Without any, the help lines are read from the
    modules' sources."""
    selected = {name for name, _ in COMMANDS} if commands is None else set(commands)
    parser = argparse.ArgumentParser(prog="vitlab", description="Vision transformers: VOLO, Pale, UniFormer, "
                                     "SegViT, EsViT - models, checkpoints, training, benchmarks.")
    parser.add_argument("--version", action="version", version=f"vitlab {__version__}")
    parser.add_argument("--debug", dest="debug_all", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, _ in COMMANDS:
        if name not in selected:  # only listed; its help line is shown by `vitlab --help` alone
            sub.add_parser(name, **({} if selected else {"help": command_help(name)}))
            continue
        module = command_module(name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        try:  # a command may declare --debug itself
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
        except argparse.ArgumentError:
            pass
        p.set_defaults(_run=module.run)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command named on the command line: the first word that is not an option (the top-level
    options take no values)."""
    known = {name for name, _ in COMMANDS}
    for word in argv:
        if word == "--":
            continue
        if not word.startswith("-"):
            return word if word in known else None
    return None


def format_error(command: str, error: BaseException) -> str:
    """``vitlab <command>: error: <message>``; a multi-line message keeps its lines, the first one prefixed."""
    if isinstance(error, KeyError) and type(error).__str__ is KeyError.__str__ and len(error.args) == 1:
        message = str(error.args[0])  # not KeyError's repr-quoted form
    else:
        message = str(error)
    message = message.strip() or type(error).__name__
    return f"vitlab {command}: error: {message}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command_in(argv)
    parser = build_parser([command] if command else [])
    args = parser.parse_args(argv)
    run = getattr(args, "_run", None)
    if run is None:
        parser.print_help()
        return 2
    options = argv[:argv.index("--")] if "--" in argv else argv  # a nested parser may reset debug to its default
    args.debug = bool(args.debug_all or getattr(args, "debug", False) or "--debug" in options)
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`vitlab eval ... | head`): stop quietly, as other tools do
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        from vitlab.cli.common import user_errors
        if args.debug or not isinstance(e, user_errors()):
            raise
        print(format_error(args.command, e), file=sys.stderr)
        code = getattr(e, "exit_code", 2)
        return code if isinstance(code, int) else 2


if __name__ == "__main__":
    sys.exit(main())

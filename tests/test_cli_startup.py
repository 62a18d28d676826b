"""The command line starts without torch (help, ``models``) and reports user errors as one line."""
import argparse
import importlib
import json
import pkgutil
import subprocess
import sys

import pytest

import vitlab.cli
from vitlab.cli import main as cli_main
from vitlab.errors import TrainingDiverged, VitlabError

HEAVY = ("torch", "numpy", "matplotlib", "sklearn", "PIL")

# run the command line in a fresh interpreter, then name the heavy modules it imported
PROBE = """
import sys
from vitlab.cli.main import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
finally:  # also when main raises (its traceback follows)
    sys.stdout.flush()
    print("HEAVY=" + ",".join(m for m in %r if m in sys.modules), file=sys.stderr, flush=True)
sys.exit(code or 0)
""" % (HEAVY,)


def probe(*argv):
    """(exit code, stdout, stderr without the probe line, heavy modules imported)."""
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=300)
    lines = done.stderr.splitlines()
    marks = [i for i, line in enumerate(lines) if line.startswith("HEAVY=")]
    assert marks, done.stderr
    heavy = [m for m in lines.pop(marks[-1])[len("HEAVY="):].split(",") if m]
    return done.returncode, done.stdout, "\n".join(lines), heavy


# commands whose module still imports torch for its parser; drop a name once its module is fixed
COMMAND_NAMES = [name for name, _ in cli_main.COMMANDS]


def test_top_level_help_lists_every_command_without_torch():
    code, out, err, heavy = probe("--help")
    assert code == 0 and heavy == [], (err, heavy)
    for name, module in cli_main.COMMANDS:
        assert name in out
        assert " ".join(importlib.import_module(f"vitlab.cli.{module}").HELP.split()[:3]) in " ".join(out.split())
    assert "--debug" in out


def test_build_parser_without_a_command_imports_no_command_module():
    code = ("import sys, vitlab.cli.main as m; m.build_parser(()); "
            "print(sorted(k for k in sys.modules if k in %r or k.startswith('vitlab.cli.') and k not in "
            "('vitlab.cli.main', 'vitlab.cli.common')))" % (HEAVY,))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


@pytest.mark.parametrize("command", COMMAND_NAMES)
def test_command_help_without_torch(command):
    code, out, err, heavy = probe(command, "--help")
    assert code == 0, err
    assert "--debug" in out
    assert heavy == [], f"`vitlab {command} --help` imports {heavy}: import them inside functions of " \
                        f"vitlab.cli.{dict(cli_main.COMMANDS)[command]}"


@pytest.mark.parametrize("argv", [["models"], ["models", "volo*"], ["models", "--families"],
                                  ["models", "volo_d1*", "--json"], ["models", "--families", "--json"]])
def test_models_without_torch(argv):
    code, out, err, heavy = probe(*argv)
    assert code == 0 and heavy == [], (err, heavy)
    if "--json" in argv:
        rows = {r["name"]: r for r in json.loads(out)}
        assert rows["volo_d1"]["params_m"] == 26.63 and rows["volo_d1"]["kind"] == "variant"
        assert ("volo" in rows) == ("--families" in argv)
    else:
        assert out.splitlines()[0].split() == ["name", "params", "description"]
        assert ("family" in out) == ("--families" in argv)


def test_unknown_model_is_one_line_with_exit_code_2():
    code, out, err, _ = probe("info", "no_such_model")
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("vitlab info: error: unknown model name 'no_such_model'")


@pytest.mark.parametrize("argv", [["--debug", "info", "no_such_model"], ["info", "no_such_model", "--debug"]])
def test_debug_shows_the_traceback(argv):
    code, out, err, _ = probe(*argv)
    assert code != 0
    assert "Traceback (most recent call last)" in err and "UnknownModelError" in err
    assert "vitlab info: error:" not in err


def test_command_table_matches_the_modules():
    """Every cli module with a COMMAND is listed in vitlab.cli.main.COMMANDS; help lines read from source match."""
    found = {}
    for info in pkgutil.iter_modules(vitlab.cli.__path__):
        if info.name in ("main", "__main__", "common"):
            continue
        module = importlib.import_module(f"vitlab.cli.{info.name}")
        if hasattr(module, "COMMAND"):
            found[module.COMMAND] = info.name
            assert cli_main.command_help(module.COMMAND) == module.HELP
    assert found == dict(cli_main.COMMANDS), "update COMMANDS in src/vitlab/cli/main.py"


# ---- the error convention, in process, through a stand-in command

def fail_with(monkeypatch, error):
    import vitlab.cli.models as models

    def run(args):
        raise error
    monkeypatch.setattr(models, "run", run)


def test_multi_line_message_keeps_its_lines(monkeypatch, capsys):
    fail_with(monkeypatch, VitlabError("checkpoint does not fit:\n  missing: a.weight\n  unexpected: b.weight"))
    assert cli_main.main(["models"]) == 2
    assert capsys.readouterr().err.splitlines() == ["vitlab models: error: checkpoint does not fit:",
                                                    "  missing: a.weight", "  unexpected: b.weight"]


@pytest.mark.parametrize("error, code, message", [
    (TrainingDiverged("loss is nan at step 3"), 3, "loss is nan at step 3"),
    (FileNotFoundError("no such folder: x"), 2, "no such folder: x"),
    (KeyError("optim.lr"), 2, "optim.lr"),
    (ValueError(""), 2, "ValueError"),
])
def test_exit_code_comes_from_the_exception(monkeypatch, capsys, error, code, message):
    fail_with(monkeypatch, error)
    assert cli_main.main(["models"]) == code
    assert capsys.readouterr().err == f"vitlab models: error: {message}\n"


def test_debug_before_or_after_the_command_reraises(monkeypatch):
    fail_with(monkeypatch, VitlabError("bad input"))
    for argv in (["--debug", "models"], ["models", "--debug"]):
        with pytest.raises(VitlabError, match="bad input"):
            cli_main.main(argv)


def test_bugs_keep_their_traceback(monkeypatch):
    fail_with(monkeypatch, RuntimeError("internal"))
    with pytest.raises(RuntimeError):
        cli_main.main(["models"])


def test_keyboard_interrupt(monkeypatch, capsys):
    fail_with(monkeypatch, KeyboardInterrupt())
    assert cli_main.main(["models"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_usage_errors_stay_argparse_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["bench"])  # --model is required
    assert exit_info.value.code == 2 and "required: --model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main.main(["no-such-command"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("command, argv", [
    ("bench", ["--model", "volo_micro", "--batch", "3", "--img", "32"]),
    ("flops", ["--model", "volo_micro", "--img", "32"]),
    ("info", ["volo_micro", "--img", "32"]),
])
def test_old_flag_spellings_are_hidden_aliases(command, argv):
    parser = cli_main.build_parser([command])
    old = parser.parse_args([command, *argv])
    new = parser.parse_args([command, *[{"--batch": "--batch-size", "--img": "--img-size"}.get(a, a) for a in argv]])
    assert vars(old) == vars(new) and old.img_size == 32
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    text = sub.format_help()
    assert "--img-size" in text and "--img " not in text and "--batch " not in text
    assert "--threads" in text if command == "bench" else True

"""Run configuration: one nested YAML dict, built in layers and checked against the task's typed sections.

Layers, later ones win: the sections' defaults (:mod:`vitlab.engine.schema`) <- the task's defaults
<- presets (``--preset``: YAML files in ``configs/``) <- the recipe file (``--config``) <- the flags
given on the command line <- ``--set section.key=value`` (the value parsed as YAML). A flag that is
not given leaves the value below it alone, so an explicit value always beats a preset, even when it
equals a default. Every key is checked: an unknown key names the layer it came from and the known
keys; a value of the wrong type names the key and the type expected. The merged result is written to
the run folder's ``config.yaml`` and repeats the run (``--config runs/x/config.yaml``).
"""
from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml

from vitlab.errors import ConfigError

from .schema import Field, check_value

Sections = dict[str, dict[str, Field]]


class _Loader(yaml.SafeLoader):
    """YAML 1.1's float rule misses ``3e-4`` (no dot); read such scalars as floats, as users mean them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str, source: str = "<text>"):
    """Parse YAML (``3e-4`` is a float); a syntax error names ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context and start is not None and start is not mark:
            problem += f"; {context} that starts at line {start.line + 1}"
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None


def load_yaml(path: str | Path) -> dict:
    """A YAML file holding a mapping of config sections."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (YAML) file") from None
    data = yaml_load(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections (model:, data:, ...), got "
                          f"{type(data).__name__}")
    return data


def parse_set(items: list[str] | None) -> dict:
    """``["optim.lr=3e-4", "model.kwargs.img_size=32"]`` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or any(not p for p in key.strip().split(".")):
            raise ConfigError(f"--set expects section.key=value, got {item!r}")
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p} was already given a value")
        node[parts[-1]] = yaml_load(raw, f"--set {item}")
    return out


def defaults_of(sections: Sections) -> dict:
    return {name: {k: copy.deepcopy(f.default) for k, f in fields.items()} for name, fields in sections.items()}


def _unknown(path: str, key: str, known, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(f"unknown config key {path + key!r} in {source}{hint}; known keys here: "
                       f"{', '.join(sorted(known))}")


def merge_layer(cfg: dict, layer: dict, sections: Sections, source: str) -> dict:
    """``layer`` merged over ``cfg``; keys outside ``sections`` are refused naming ``source``."""
    out = copy.deepcopy(cfg)
    if not isinstance(layer, dict):
        raise ConfigError(f"{source}: expected a mapping of config sections, got {type(layer).__name__}")
    for name, values in layer.items():
        if name == "task":
            out["task"] = values
            continue
        if name not in sections:
            raise _unknown("", name, [*sections, "task"], source)
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section {name!r} must be a mapping of keys, got {values!r}")
        for key, value in values.items():
            field = sections[name].get(key)
            if field is None:
                raise _unknown(f"{name}.", key, sections[name], source)
            if field.kind == "dict" and isinstance(value, dict) and isinstance(out[name].get(key), dict):
                out[name][key] = _deep_update(out[name][key], value)
            else:
                out[name][key] = copy.deepcopy(value)
    return out


def _deep_update(base: dict, update: dict) -> dict:
    out = dict(base)
    for k, v in update.items():
        out[k] = _deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def validate(cfg: dict, sections: Sections) -> dict:
    """Every value checked (and converted) against its field."""
    out = {"task": cfg.get("task")}
    for name, fields in sections.items():
        out[name] = {key: check_value(cfg[name][key], field, f"{name}.{key}") for key, field in fields.items()}
    return out


def compose(sections: Sections, layers: list[tuple[str, dict]]) -> dict:
    """Defaults <- each ``(source, layer)`` in order, then type-checked."""
    cfg = defaults_of(sections)
    for source, layer in layers:
        cfg = merge_layer(cfg, layer or {}, sections, source)
    return validate(cfg, sections)


def dump_yaml(cfg: dict) -> str:
    return yaml.safe_dump(_plain(cfg), sort_keys=False, default_flow_style=None)


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# --- presets: YAML files in configs/ --------------------------------------------------------------

def configs_root() -> Path:
    """The ``configs/`` folder: the source checkout's, or the copy installed inside the package."""
    here = Path(__file__).resolve()
    checkout = here.parents[3] / "configs"
    if checkout.is_dir() and (here.parents[3] / "pyproject.toml").is_file():
        return checkout
    from importlib import resources
    return Path(str(resources.files("vitlab.configs")))


def preset_path(name: str, task: str | None = None) -> Path:
    """``--preset NAME``: a YAML path, or ``configs/NAME.yaml``, or ``configs/<task>/NAME.yaml``."""
    if name.endswith((".yaml", ".yml")) and Path(name).is_file():
        return Path(name)
    root = configs_root()
    for candidate in (root / f"{name}.yaml", root / str(task) / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))
    raise ConfigError(f"unknown preset {name!r}; presets in {root}: {', '.join(known) or 'none'}")


def presets(task: str | None = None) -> list[str]:
    """Names of the presets of ``task`` (files in ``configs/<task>/``), or of all of them."""
    root = configs_root()
    folder = root / task if task else root
    return sorted(p.relative_to(folder).with_suffix("").as_posix() for p in folder.rglob("*.yaml")) \
        if folder.is_dir() else []


def get(cfg: dict, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part]
    return node


def put(tree: dict, dotted: str, value) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``, creating the mappings on the way."""
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value

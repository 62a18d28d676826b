"""Model registry: ``register_model`` / ``register_family`` / ``create_model`` / ``list_models``.

Two kinds of names exist:

* a *variant* (``volo_d1``): a function with fixed architecture arguments; keyword arguments
  override them (``num_classes=10``, ``img_size=384``, ``drop_path_rate=0.1``);
* a *family* (``volo``): the model class itself, called with the official constructor's
  keyword arguments so that an official config builds the same network.

Every module under :mod:`vitlab.models` registers itself on import; the registry imports
them all the first time a name is looked up.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn


class UnknownModelError(KeyError):
    """Raised for a model name that is not registered; the message lists the closest names."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


@dataclass
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    is_family: bool = False
    aliases: tuple[str, ...] = ()
    pretrained_cfg: dict[str, Any] = field(default_factory=dict)
    doc: str = ""


_ENTRIES: dict[str, ModelEntry] = {}
_ALIASES: dict[str, str] = {}
_LOADED = False


def _summary(fn: Callable) -> str:
    return (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""


def _add(entry: ModelEntry) -> None:
    for key in (entry.name, *entry.aliases):
        if key in _ENTRIES or key in _ALIASES:
            raise ValueError(f"model name {key!r} is registered twice")
    _ENTRIES[entry.name] = entry
    for alias in entry.aliases:
        _ALIASES[alias] = entry.name


def register_model(fn: Callable | None = None, *, family: str | None = None, name: str | None = None,
                   pretrained_cfg: dict | None = None, aliases: tuple[str, ...] = ()):
    """Decorator registering a variant constructor ``fn(**overrides) -> nn.Module``.

    The family defaults to the name's prefix before the first underscore.
    """
    def wrap(f: Callable) -> Callable:
        variant = name or f.__name__
        _add(ModelEntry(variant, f, family or variant.split("_")[0], False, tuple(aliases),
                        dict(pretrained_cfg or {}), _summary(f)))
        return f
    return wrap(fn) if fn is not None else wrap


def register_family(name: str, builder: Callable[..., nn.Module], aliases: tuple[str, ...] = (), doc: str = "") -> None:
    """Register a family name whose builder takes the official constructor's keyword arguments."""
    _add(ModelEntry(name, builder, name, True, tuple(aliases), {}, doc or _summary(builder)))


def _ensure_loaded() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    import vitlab.models as pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in ("registry", "base", "features"):
            importlib.import_module(f"vitlab.models.{info.name}")


def get_entry(name: str) -> ModelEntry:
    """Look up a variant, family or alias; an unknown name raises with the closest matches."""
    _ensure_loaded()
    key = _ALIASES.get(name, name)
    if key in _ENTRIES:
        return _ENTRIES[key]
    known = sorted([*_ENTRIES, *_ALIASES])
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    prefix = [k for k in known if k.startswith(name.split("_")[0])][:8]
    suggestions = list(dict.fromkeys(close + prefix))[:8]
    hint = f" Closest names: {', '.join(suggestions)}." if suggestions else ""
    raise UnknownModelError(f"unknown model name {name!r}.{hint} `vitlab models` lists all {len(_ENTRIES)} names.")


def list_models(pattern: str = "*", family: str | None = None, include_families: bool = False) -> list[str]:
    """Registered variant names matching an fnmatch ``pattern`` (families too with ``include_families``)."""
    _ensure_loaded()
    names = [e.name for e in _ENTRIES.values()
             if (include_families or not e.is_family) and (family is None or e.family == family)]
    return sorted(n for n in names if fnmatch.fnmatchcase(n, pattern))


def create_model(name: str, pretrained: str | None = None, **kwargs) -> nn.Module:
    """Build a model by variant or family name.

    ``pretrained`` is a local checkpoint path (file or model folder); vitlab never downloads.
    Keyword arguments override the variant's architecture or are the family's constructor arguments.
    """
    entry = get_entry(name)
    if pretrained is True:
        raise ValueError("pretrained=True would need a download; vitlab loads local files only: "
                         "pass pretrained='path/to/checkpoint.pth' (or a model folder)")
    model = entry.builder(**kwargs)
    model.model_name = entry.name
    model.model_kwargs = dict(kwargs)
    if entry.pretrained_cfg and hasattr(model, "pretrained_cfg"):
        cfg = dict(model.pretrained_cfg)
        cfg.update({k: v for k, v in entry.pretrained_cfg.items() if k not in ("input_size", "num_classes")})
        model.pretrained_cfg = cfg
    size = tuple(getattr(model, "pretrained_cfg", {}).get("input_size", ()))
    chans = kwargs.get("in_chans")
    if size and isinstance(chans, int) and size[0] != chans:   # the input size says how many channels go in
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (chans, *size[1:])}
    if pretrained:
        from vitlab.checkpoints.load import load_checkpoint
        load_checkpoint(model, pretrained, strict=True)
    return model


def build_without_weights(name: str, **kwargs) -> nn.Module:
    """Build a model for inspection (shapes, parameter counts) as cheaply as possible.

    Uses the meta device (no memory, no initialisation); constructors that need real tensor data
    (e.g. ``linspace(...).tolist()``) fall back to a normal CPU build.
    """
    import torch
    try:
        with torch.device("meta"):
            return create_model(name, **kwargs)
    except (NotImplementedError, RuntimeError):
        return create_model(name, **kwargs)


def family_of(name: str) -> str:
    return get_entry(name).family

"""Model registry: ``register_model`` / ``register_family`` / ``create_model`` / ``list_models``.

Two kinds of names exist:

* a *variant* (``volo_d1``): a function with fixed architecture arguments; keyword arguments
  override them (``num_classes=10``, ``img_size=384``, ``drop_path_rate=0.1``);
* a *family* (``volo``): the model class itself, called with the official constructor's
  keyword arguments so that an official config builds the same network.

Every module under :mod:`vitlab.models` registers itself on import; the registry imports
them all the first time a name is looked up.

``create_model`` takes timm's arguments too: ``num_classes`` (a checkpoint's classifier for
another number of classes is re-initialised, the rest loads strictly), ``global_pool``,
``features_only`` / ``out_indices``; ``list_models(pretrained=True)`` keeps names with released weights.
"""
from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from vitlab.models.feature_extractor import FeatureExtractor
from vitlab.models.global_pool import MAP_POOLS, TOKEN_POOLS, apply_global_pool, check_global_pool
from vitlab.models.pretrained import load_pretrained



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
        if info.name not in ("registry", "base", "features", "feature_extractor"):
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


def list_models(pattern: str | Sequence[str] = "*", family: str | None = None, include_families: bool = False,
                pretrained: bool = False) -> list[str]:
    """Registered variant names matching an fnmatch ``pattern`` (or any of several; families too with
    ``include_families``). ``pretrained=True`` keeps the names with a released checkpoint in vitlab's
    weight zoo (none while the zoo is not installed)."""
    _ensure_loaded()
    patterns = [pattern or "*"] if isinstance(pattern, str) else list(pattern) or ["*"]
    names = [e.name for e in _ENTRIES.values()
             if (include_families or not e.is_family) and (family is None or e.family == family)]
    names = sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))
    if pretrained:
        released = _released_names()
        names = [n for n in names if n in released]
    return names


def _released_names() -> set[str]:
    """Names with a released checkpoint (``vitlab.checkpoints.zoo.zoo_names``), tags like ``.in1k`` removed."""
    try:
        from vitlab.checkpoints.zoo import zoo_names
    except ModuleNotFoundError as e:
        if e.name not in ("vitlab.checkpoints.zoo", "vitlab.checkpoints"):
            raise
        return set()
    _ensure_loaded()
    names = {str(n).split(".")[0] for n in zoo_names()}
    return {_ALIASES.get(n, n) for n in names}


def _zoo_weights(model: str, pretrained) -> tuple[dict, str | None]:
    """``pretrained=True`` or a weight name (``'volo_d1.in1k'``): the cached file and the overrides it needs.

    Nothing is downloaded here: a file not in the cache raises an error naming the ``vitlab weights``
    command and the URL that bring it (:func:`vitlab.checkpoints.download.cached_weights`).
    """
    import os
    if pretrained is None or pretrained is False:
        return {}, None
    from vitlab.checkpoints.download import cached_weights
    from vitlab.checkpoints.zoo import pretrained_entry, zoo_entry, zoo_names
    named = isinstance(pretrained, str) and not os.path.exists(pretrained) and pretrained in zoo_names()
    if pretrained is not True and not named:
        return {}, pretrained                       # a local file or folder
    weights = pretrained_entry(model) if pretrained is True else zoo_entry(pretrained)
    if weights.model != model:
        raise ValueError(f"the weights {weights.name} are for {weights.model}, not {model}")
    return weights.model_kwargs, str(cached_weights(weights, download=False))


def create_model(name: str, pretrained: str | None = None, *, features_only: bool = False, out_indices=None,
                 **kwargs) -> nn.Module:
    """Build a model by variant or family name, the way ``timm.create_model`` does.

    ``pretrained`` is a local checkpoint path (file or model folder), ``True`` (the model's released
    weights from the cache, ``vitlab weights download NAME`` puts them there) or a weight name of
    ``vitlab models --zoo`` (``'volo_d1_384.in1k'``); nothing is downloaded here.
    Keyword arguments override the variant's architecture or are the family's constructor arguments.
    With ``num_classes=K`` given and a checkpoint whose classifier has another number of classes,
    the classifier stays freshly initialised and everything else loads strictly (one log line says
    so); ``num_classes=0`` gives a backbone whose ``forward`` returns pooled features.
    ``global_pool`` is timm's pooling choice ('token', 'avg', '': none), per family.
    ``features_only=True`` returns a :class:`~vitlab.models.feature_extractor.FeatureExtractor`:
    ``forward`` gives the feature maps at ``out_indices`` (default: all; an int n: the last n).
    """
    entry = get_entry(name)
    zoo_kwargs, pretrained = _zoo_weights(entry.name, pretrained)
    explicit_classes = "num_classes" in kwargs or features_only      # the user's own choice, not the zoo's
    kwargs = {**zoo_kwargs, **kwargs}
    if out_indices is not None and not features_only:
        raise ValueError("out_indices selects feature maps of a features_only=True model; pass features_only=True "
                         "(or call model.forward_intermediates(x, indices))")
    build_kwargs = dict(kwargs)
    pool = build_kwargs.pop("global_pool", None)
    if pool is not None:
        check_global_pool(entry.name, entry.family, pool)
    if pool is not None and entry.family == "vit" and pool in ("token", "avg"):
        build_kwargs["global_pool"] = pool          # ViT takes these in its constructor
    if features_only:
        if entry.family not in (*TOKEN_POOLS, *MAP_POOLS):
            raise ValueError(f"{entry.name}: features_only is offered for the classification families "
                             f"({', '.join(sorted({*TOKEN_POOLS, *MAP_POOLS}))}); {entry.family} models "
                             f"give their maps through their own API")
        build_kwargs.setdefault("num_classes", 0)
    model = entry.builder(**build_kwargs)
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
    if pool is not None:
        apply_global_pool(model, entry.family, pool)
    if pretrained:
        load_pretrained(model, pretrained, adapt_classifier=explicit_classes)
    if not features_only:
        return model
    if getattr(model, "num_classes", 0):
        model.reset_classifier(0)   # the maps need no classifier (timm prunes it too)
    extractor = FeatureExtractor(model, out_indices)
    extractor.model_kwargs = {**kwargs, "features_only": True,
                              **({"out_indices": list(extractor.out_indices)} if out_indices is not None else {})}
    return extractor


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


# where a family takes its encoder's stochastic depth: wrappers name their backbone's keyword dict
_BACKBONE_KWARGS = {"segvit": "backbone", "upernet": "backbone_kwargs", "semantic_fpn": "backbone_kwargs",
                    "mask_rcnn": "backbone_kwargs", "cascade_mask_rcnn": "backbone_kwargs",
                    "topdown_pose": "backbone_kwargs"}


# families whose position embedding is fixed unless asked to interpolate it per input size
_FIXED_SIZE_FAMILIES = {"volo": "dynamic_img_size"}


def with_any_input_size(name: str, kwargs: dict) -> dict:
    """``kwargs`` that let ``name`` take inputs of other sizes than ``img_size`` (VOLO interpolates its position
    embedding with ``dynamic_img_size=True``; the other families already do); an explicit value is kept."""
    key = _FIXED_SIZE_FAMILIES.get(family_of(name))
    return {key: True, **kwargs} if key else dict(kwargs)


def with_drop_path(name: str, kwargs: dict, rate: float) -> dict:
    """``kwargs`` with the stochastic-depth rate ``model.drop_path`` where ``name``'s family takes it:
    ``drop_path_rate`` for backbones, inside the backbone's keyword dict for segmentors, detectors and
    pose models (SegViT: its mmseg ``backbone`` dict)."""
    key = _BACKBONE_KWARGS.get(family_of(name))
    if key is None:
        return {**kwargs, "drop_path_rate": rate}
    return {**kwargs, key: {**(kwargs.get(key) or {}), "drop_path_rate": rate}}


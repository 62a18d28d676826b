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
import logging
import pkgutil
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from vitlab.models.feature_extractor import FeatureExtractor

_logger = logging.getLogger(__name__)


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


# --- global_pool: timm's pooling choices, per family ------------------------------------------------
# 'token' = the class token, 'avg' = the mean over tokens / positions, '' = no pooling. Token models
# (ViT, VOLO) apply the classifier to every token when unpooled (as timm does); models whose features
# are a map only drop the pooling with the classifier removed (num_classes=0), timm's rule too.
_TOKEN_POOLS = {"vit": ("token", "avg", ""), "volo": ("token", "avg", "")}
_MAP_POOLS = {f: ("avg", "") for f in ("pale", "uniformer", "uniformer_light", "uniformer_video", "swin")}


def _volo_head(self, x, pre_logits: bool = False):
    """VOLO's head with timm's ``global_pool``: 'token' (x[:, 0]), 'avg' (mean of all tokens) or '' (none);
    the aux head's token-labeling term ``0.5 * max_tokens(aux_head(tokens))`` is added to the logits."""
    pool = self.global_pool
    out = x[:, 0] if pool == "token" else x.mean(1) if pool == "avg" else x
    if pre_logits:
        return out
    if pool == "" and self.num_classes == 0:
        return out
    logits = self.head(out)
    if getattr(self, "return_dense", False) and hasattr(self, "aux_head"):
        aux = 0.5 * self.aux_head(x[:, 1:]).max(1).values
        logits = logits + (aux.unsqueeze(1) if pool == "" else aux)
    return logits


def _unpooled_tokens_head(self, x, pre_logits: bool = False):
    """global_pool='': every token, (B, N, C); with a classifier the logits of every token, (B, N, K)."""
    return x if pre_logits else self.head(x)


def _unpooled_head(self, x, pre_logits: bool = False):
    """global_pool='': the unpooled features (map or tokens) as ``forward_features`` gives them."""
    return x


def check_global_pool(name: str, family: str, pool: str) -> None:
    """Refuse, in one line naming the choices, a ``global_pool`` value the family does not offer."""
    choices = _TOKEN_POOLS.get(family) or _MAP_POOLS.get(family)
    if choices is None:
        raise ValueError(f"{name}: global_pool is not an option of {family} models (only of "
                         f"{', '.join(sorted({*_TOKEN_POOLS, *_MAP_POOLS}))})")
    if pool not in choices:
        raise ValueError(f"{name}: global_pool must be one of {', '.join(repr(c) for c in choices)}, got {pool!r}")


def apply_global_pool(model: nn.Module, family: str, pool: str) -> None:
    """Set timm's ``global_pool`` on a built model (after :func:`check_global_pool`)."""
    name = getattr(model, "model_name", family)
    check_global_pool(name, family, pool)
    if family in _MAP_POOLS:
        if pool == "":
            if getattr(model, "num_classes", 0):
                raise ValueError(f"{name}: global_pool='' leaves no pooled vector for the classifier; build it "
                                 f"with num_classes=0 as well (forward then returns the unpooled features)")
            model.forward_head = types.MethodType(_unpooled_head, model)
        model.global_pool = pool
    elif family == "volo":
        if getattr(model, "return_mean", False) and pool != "avg":
            raise ValueError(f"{name}: built with return_mean=True, which pools by the mean: global_pool must "
                             f"be 'avg'")
        model.global_pool = pool
        model.forward_head = types.MethodType(_volo_head, model)
    elif pool == "":  # vit: 'token' and 'avg' are constructor arguments
        model.global_pool = pool
        model.forward_head = types.MethodType(_unpooled_tokens_head, model)


# --- pretrained weights for another classifier -------------------------------------------------------
def _classifier_tensors(model: nn.Module, state_dict: dict) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The model's classifier modules and the checkpoint's Linear classifier tensors for them."""
    names = [n for n in getattr(model, "classifier_names", ("head", "aux_head"))
             if isinstance(getattr(model, n, None), nn.Module)]
    found = {}
    for n in names:
        weight = state_dict.get(f"{n}.weight")
        if weight is not None and weight.ndim == 2:
            found[f"{n}.weight"] = weight
            if f"{n}.bias" in state_dict:
                found[f"{n}.bias"] = state_dict[f"{n}.bias"]
    return names, found


def load_pretrained(model: nn.Module, path, adapt_classifier: bool = False):
    """Load ``path`` strictly; with ``adapt_classifier`` a checkpoint classifier for another number of
    classes is left out and the model's own (freshly initialised) one kept, as timm does when
    ``num_classes`` differs. Every other weight still loads strictly (a mismatch raises CheckpointError).
    Returns the :class:`~vitlab.checkpoints.load.LoadReport`."""
    from vitlab.checkpoints.load import CheckpointError, load_checkpoint
    if not adapt_classifier:
        return load_checkpoint(model, path, strict=True)
    try:
        return _load_adapting_classifier(model, path)
    except CheckpointError as e:   # name the file, not the dict it was read into
        raise CheckpointError(str(e).replace("checkpoint <state dict>", f"checkpoint {path}", 1)) from None


def _load_adapting_classifier(model: nn.Module, path):
    from vitlab.checkpoints.load import load_checkpoint, read_checkpoint_object, strip_prefixes, unwrap_state_dict
    state_dict, wrapper = unwrap_state_dict(read_checkpoint_object(path))
    state_dict = strip_prefixes(dict(state_dict), set(model.state_dict()), [])
    names, ckpt_head = _classifier_tensors(model, state_dict)
    own_head = {k: v for k, v in model.state_dict().items() if k.endswith(".weight") and k.split(".")[0] in names}
    ckpt_classes = {v.shape[0] for k, v in ckpt_head.items() if k.endswith(".weight")}
    own_classes = {v.shape[0] for v in own_head.values() if v.ndim == 2} or {0}
    if ckpt_classes == own_classes or (not ckpt_head and own_classes == {0}):
        report = load_checkpoint(model, state_dict, strict=True)
    else:  # timm drops the checkpoint's classifier when num_classes differs and keeps the model's own
        rest = {k: v for k, v in state_dict.items() if k not in ckpt_head}
        report = load_checkpoint(model, rest, strict=True, drop_classifier=True)
        model_name = getattr(model, "model_name", type(model).__name__)
        k = getattr(model, "num_classes", min(own_classes))
        ckpt_k = "/".join(str(c) for c in sorted(ckpt_classes))
        if k:
            reinit = ", ".join(key for key in model.state_dict() if key.split(".")[0] in names)
            had = f"the checkpoint's classifier has {ckpt_k} classes" if ckpt_head else \
                "the checkpoint has no classifier"
            line = (f"{model_name}: {had}, the model {k}: re-initialised {reinit}; every other weight loaded "
                    f"from {path}")
            _logger.warning(line)
        else:
            line = (f"{model_name}: num_classes=0, left out the checkpoint's {ckpt_k}-class classifier "
                    f"({', '.join(sorted(ckpt_head))}); every other weight loaded from {path}")
            _logger.info(line)
        report.notes.append(line)
    report.source, report.wrapper = str(path), wrapper
    return report


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
        if entry.family not in (*_TOKEN_POOLS, *_MAP_POOLS):
            raise ValueError(f"{entry.name}: features_only is offered for the classification families "
                             f"({', '.join(sorted({*_TOKEN_POOLS, *_MAP_POOLS}))}); {entry.family} models "
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

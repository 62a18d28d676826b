"""Make vitlab models creatable through timm: ``timm.create_model("vitlab_uniformer_small")``.

``register()`` adds one entry point per vitlab variant to timm's model registry, named
``vitlab_<name>``. The models are vitlab's own classes (timm-style API: ``forward_features``,
``forward_head``, ``reset_classifier``, ``pretrained_cfg``), so timm's data config resolution,
training scripts and ``checkpoint_path=`` loading work with them. vitlab never downloads:
``pretrained=True`` raises; give weights with ``checkpoint_path=...`` or
``pretrained_cfg={"file": path}`` (official key layouts are remapped on load).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

PREFIX = "vitlab_"
# timm factory arguments that vitlab builders do not take
_TIMM_ONLY = ("cache_dir", "scriptable", "exportable", "no_jit")


def timm_name(name: str) -> str:
    return PREFIX + name


def make_entrypoint(name: str) -> Callable[..., Any]:
    """A timm-style entry point ``fn(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kw)``."""
    from vitlab.models.registry import create_model, get_entry

    def entrypoint(pretrained: bool = False, pretrained_cfg=None, pretrained_cfg_overlay: dict | None = None,
                   **kwargs):
        for key in _TIMM_ONLY:
            kwargs.pop(key, None)
        if kwargs.pop("features_only", False):
            raise ValueError(f"{timm_name(name)}: features_only is not supported; vitlab models return feature maps "
                             f"from model.forward_intermediates(x) (channels/strides in model.feature_info)")
        weights = pretrained_cfg.get("file") if isinstance(pretrained_cfg, dict) else None
        if pretrained and not weights:
            raise ValueError(f"{timm_name(name)}: vitlab does not download weights; pass "
                             f"checkpoint_path='weights.pth' (or pretrained_cfg={{'file': 'weights.pth'}})")
        model = create_model(name, pretrained=weights, **kwargs)
        if pretrained_cfg_overlay:
            model.pretrained_cfg = {**model.pretrained_cfg, **pretrained_cfg_overlay}
        return model

    entrypoint.__name__ = entrypoint.__qualname__ = timm_name(name)
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = get_entry(name).doc or f"vitlab model {name}"
    return entrypoint


def register(pattern: str = "*", registry: Any = None) -> list[str]:
    """Add every vitlab variant matching ``pattern`` to timm's registry; return the names added.

    Calling it again is harmless (names already registered are skipped). ``registry`` is the
    object providing ``register_model`` and ``is_model`` (default: ``timm.models``).
    """
    if registry is None:
        try:
            import timm.models as registry
        except ImportError as e:
            raise ImportError(f"vitlab.integrations.timm.register() needs timm ({e}); `pip install timm`") from e
    from vitlab.models.registry import list_models
    module = sys.modules[__name__]
    added = []
    for name in list_models(pattern):
        entry_name = timm_name(name)
        if registry.is_model(entry_name):
            continue
        fn = make_entrypoint(name)
        setattr(module, entry_name, fn)  # timm looks entry points up on their module
        registry.register_model(fn)
        added.append(entry_name)
    return added

"""vitlab: VOLO, Pale Transformer, UniFormer, SegViT and EsViT in one PyTorch package.

The public names below are loaded on first use (PEP 562), so ``import vitlab`` does not import
torch: the command line answers ``vitlab --help`` or ``vitlab models`` without it.
``from vitlab import create_model`` and ``vitlab.create_model(...)`` work as usual.

:func:`resolve_data_config` and :func:`create_transform` are timm's preprocessing calls, built on
vitlab's own transforms (:mod:`vitlab.data.transforms`)::

    transform = vitlab.create_transform(**vitlab.resolve_data_config(model=model))
    x = transform(pil_image).unsqueeze(0)
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "create_model": "vitlab.models.registry",
    "list_models": "vitlab.models.registry",
    "register_family": "vitlab.models.registry",
    "register_model": "vitlab.models.registry",
    "load_checkpoint": "vitlab.checkpoints.load",
    "CheckpointError": "vitlab.checkpoints.load",
    "LoadReport": "vitlab.checkpoints.load",
    "from_pretrained": "vitlab.checkpoints.hub",
    "save_pretrained": "vitlab.checkpoints.hub",
    "FeatureInfo": "vitlab.models.features",
}

__all__ = [*_LAZY, "resolve_data_config", "resolve_model_data_config", "create_transform", "__version__"]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time these come from __getattr__
    from .checkpoints.hub import from_pretrained, save_pretrained
    from .checkpoints.load import CheckpointError, LoadReport, load_checkpoint
    from .models.features import FeatureInfo
    from .models.registry import create_model, list_models, register_family, register_model


# --- timm's preprocessing calls -----------------------------------------------------------------------
_DEFAULT_CROP_PCT = 0.875
_DEFAULT_CROP_MODE = "center"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)   # = vitlab.models.base.IMAGENET_MEAN / _STD (not imported: no torch here)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _per_channel(values, in_chans: int, what: str) -> tuple[float, ...]:
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        return values * in_chans
    if len(values) != in_chans:
        raise ValueError(f"resolve_data_config: {what} has {len(values)} values for {in_chans} input channels")
    return values


def resolve_data_config(args=None, pretrained_cfg: dict | None = None, model=None, use_test_size: bool = False,
                        verbose: bool = False) -> dict:
    """timm's ``resolve_data_config``: the preprocessing dict for a model, with ``args`` overriding it.

    Returns ``input_size``, ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``. Values come
    from ``args`` (a dict or argparse namespace: ``in_chans``/``chans``, ``input_size``, ``img_size``,
    ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``) first, then ``pretrained_cfg``
    (default: ``model.pretrained_cfg``), then timm's defaults (224 px, bicubic, ImageNet statistics,
    0.875, 'center'). ``use_test_size`` prefers ``test_input_size`` / ``test_crop_pct`` when the config has them.
    """
    if args is None and pretrained_cfg is None and model is None:
        raise ValueError("resolve_data_config needs a model, a pretrained_cfg or args")
    args = dict(vars(args) if hasattr(args, "__dict__") and not isinstance(args, dict) else args or {})
    cfg = dict(pretrained_cfg or (getattr(model, "pretrained_cfg", None) if model is not None else None) or {})
    out = {}
    in_chans = args.get("in_chans") or args.get("chans") or 3
    input_size = (in_chans, 224, 224)
    if args.get("input_size") is not None:
        input_size = tuple(args["input_size"])
        in_chans = input_size[0]
    elif args.get("img_size") is not None:
        size = args["img_size"]
        input_size = (in_chans, *((size, size) if isinstance(size, int) else tuple(size)))
    elif use_test_size and cfg.get("test_input_size") is not None:
        input_size = tuple(cfg["test_input_size"])
    elif cfg.get("input_size") is not None:
        input_size = tuple(cfg["input_size"])
    out["input_size"] = input_size
    out["interpolation"] = args.get("interpolation") or cfg.get("interpolation") or "bicubic"
    for key, default in (("mean", _IMAGENET_MEAN), ("std", _IMAGENET_STD)):
        if args.get(key) is not None:
            out[key] = _per_channel(args[key], in_chans, key)
        else:
            out[key] = tuple(cfg.get(key) or default)
    crop_pct = args.get("crop_pct") or (use_test_size and cfg.get("test_crop_pct")) or cfg.get("crop_pct")
    out["crop_pct"] = crop_pct or _DEFAULT_CROP_PCT
    out["crop_mode"] = args.get("crop_mode") or cfg.get("crop_mode") or _DEFAULT_CROP_MODE
    if verbose:
        import logging
        logger = logging.getLogger(__name__)
        logger.info("Data processing configuration for current model + dataset:")
        for key, value in out.items():
            logger.info("\t%s: %s", key, value)
    return out


def resolve_model_data_config(model, args=None, pretrained_cfg: dict | None = None, use_test_size: bool = False,
                              verbose: bool = False) -> dict:
    """:func:`resolve_data_config` with the model first (timm's ``resolve_model_data_config``)."""
    return resolve_data_config(args, pretrained_cfg, model, use_test_size, verbose)


# timm create_transform options vitlab's transforms do not offer, with the value that means "off"
_TIMM_ONLY_OFF = {"use_prefetcher": False, "separate": False, "tf_preprocessing": False, "vflip": 0.0,
                  "crop_border_pixels": None, "train_crop_mode": None, "color_jitter_prob": None,
                  "grayscale_prob": 0.0, "gaussian_blur_prob": 0.0, "re_num_splits": 0, "normalize": True}


def create_transform(input_size=224, is_training: bool = False, no_aug: bool = False, scale=None, ratio=None,
                     hflip: float = 0.5, color_jitter: float = 0.4, auto_augment: str | None = None,
                     interpolation: str = "bilinear", mean=None, std=None, re_prob: float = 0.0,
                     re_mode: str = "const", re_count: int = 1, crop_pct: float | None = None,
                     crop_mode: str | None = None, **timm_options):
    """timm's ``create_transform`` on vitlab's pure-torch transforms: a callable ``t(pil_image) -> (C, H, W)``.

    Evaluation (default): resize the short side to ``size / crop_pct``, centre-crop ``size``, normalise
    (vitlab's :func:`~vitlab.data.transforms.build_eval_transform`; ``crop_mode`` 'center' only).
    ``is_training=True``: random resized crop (``scale``, ``ratio``), flip, RandAugment (``auto_augment``)
    or colour jitter, normalise, random erasing (``re_prob``); ``no_aug=True``: resize and centre crop.
    Pass it :func:`resolve_data_config`'s dict as keyword arguments.
    """
    from vitlab.data import transforms as T
    for key, value in timm_options.items():
        if key not in _TIMM_ONLY_OFF:
            raise TypeError(f"create_transform() got an unexpected keyword argument {key!r}")
        if value != _TIMM_ONLY_OFF[key]:
            raise ValueError(f"create_transform: {key}={value!r} is a timm option vitlab's transforms do not offer")
    if crop_mode not in (None, "center"):
        raise ValueError(f"create_transform: crop_mode={crop_mode!r} is not offered; vitlab crops the centre "
                         f"(crop_mode='center')")
    if interpolation not in T.INTERPOLATIONS:
        raise ValueError(f"create_transform: interpolation must be one of {', '.join(T.INTERPOLATIONS)}, "
                         f"got {interpolation!r}")
    if isinstance(input_size, int):
        chans, size = 3, (input_size, input_size)
    else:
        chans, size = (input_size[0] if len(input_size) >= 3 else 3), tuple(input_size[-2:])
    mean = tuple(mean) if mean is not None else _IMAGENET_MEAN
    std = tuple(std) if std is not None else _IMAGENET_STD
    if not is_training:
        cfg = {"input_size": (chans, *size), "crop_pct": crop_pct or _DEFAULT_CROP_PCT,
               "interpolation": interpolation, "mean": mean, "std": std}
        return T.build_eval_transform(cfg)
    if no_aug:
        return T.Compose([T.ToTensor(), T.ToChannels(chans), T.ResizeCenterCrop(size, 1.0, interpolation),
                          T.Normalize(mean, std)])
    if not isinstance(color_jitter, (int, float)):
        raise ValueError(f"create_transform: color_jitter must be one number (brightness = contrast = saturation), "
                         f"got {color_jitter!r}")
    return T.build_train_transform(size, mean, std, chans, scale=tuple(scale or (0.08, 1.0)),
                                   ratio=tuple(ratio or (3 / 4, 4 / 3)), hflip=hflip, color_jitter=color_jitter,
                                   auto_augment=auto_augment, reprob=re_prob, remode=re_mode, recount=re_count,
                                   interpolation=interpolation)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("_"):  # a sub-package (``vitlab.models``), imported on first access
        try:
            value = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})

"""``dataset.json``: what a dataset folder says about itself, checked before anything reads it.

A folder may hold a ``dataset.json`` with these keys (all optional; ``docs/datasets.md`` has examples):

=====================  ======================  ==========================================================
key                    type                    meaning
=====================  ======================  ==========================================================
``layout``             str                     how the files are arranged (:data:`LAYOUTS`); the reader
                                               for ``--data video-folder:PATH`` / a segmentation folder
                                               follows it, and the layout brings its defaults (classes,
                                               palette, ``reduce_zero_label``) which the other keys override
``classes``            list of str             class names, index i = label i (after ``reduce_zero_label``)
``palette``            list of [r, g, b]       one colour (0..255) per class, for overlays
``reduce_zero_label``  bool                    label 0 is "other" -> ignored, c -> c - 1 (ADE20K)
``ignore_index``       int (0..65535)          the label value that is not scored (default 255)
``class_order``        str or list of str      video lists: the class order the label indices follow:
                                               a file in the folder (one name a line, ``name<TAB>index``
                                               or ``name index`` lines, or a JSON list / name -> index
                                               object), a built-in order (``uniformer-k400``,
                                               ``uniformer-k600``) or ``alphabetical``
=====================  ======================  ==========================================================

Descriptive keys are accepted and ignored: ``name``, ``version``, ``description``, ``source``, ``license``,
``url``, ``citation``, ``info`` (anything), and the generator arguments vitlab's own sets write
(``num_train``, ``num_val``, ``size``, ``seed``). Any other key, a value of the wrong type, a palette
whose length differs from the classes', duplicate class names: :class:`~vitlab.errors.DataError`, one line
that names the file and every problem.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vitlab.errors import DataError

SEG_LAYOUTS = ("ade20k", "coco-stuff10k", "pascal-context", "pascal-context-59")
VIDEO_LAYOUTS = ("video-folder", "video-list", "kinetics", "ssv2", "frame-list")
LAYOUTS = SEG_LAYOUTS + VIDEO_LAYOUTS

INFO_KEYS = {"name": (str,), "version": (int, str), "description": (str,), "source": (str,), "license": (str,),
             "url": (str,), "citation": (str,), "info": (object,), "num_train": (int,), "num_val": (int,),
             "size": (int,), "seed": (int,)}
KEYS = ("layout", "classes", "palette", "reduce_zero_label", "ignore_index", "class_order")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _str_list(v) -> bool:
    return isinstance(v, list) and all(isinstance(s, str) for s in v)


def _problems(meta: dict) -> list[str]:
    out = []
    for key, value in meta.items():
        if key in INFO_KEYS:
            types = INFO_KEYS[key]
            if object not in types and not (isinstance(value, types) and not isinstance(value, bool)):
                out.append(f"{key!r} must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
        elif key not in KEYS:
            out.append(f"unknown key {key!r}")
    if "layout" in meta and meta["layout"] not in LAYOUTS:
        out.append(f"'layout' must be one of {', '.join(LAYOUTS)}, got {meta['layout']!r}")
    classes = meta.get("classes")
    if classes is not None:
        if not _str_list(classes) or not classes:
            out.append(f"'classes' must be a non-empty list of strings, got {_short(classes)}")
        else:
            dup = sorted({c for c in classes if classes.count(c) > 1})
            if dup:
                out.append(f"'classes' lists {', '.join(map(repr, dup))} more than once")
    palette = meta.get("palette")
    if palette is not None:
        ok = isinstance(palette, list) and all(
            isinstance(c, list) and len(c) == 3 and all(_is_int(v) and 0 <= v <= 255 for v in c) for c in palette)
        if not ok:
            out.append(f"'palette' must be a list of [r, g, b] with values 0..255, got {_short(palette)}")
        elif _str_list(classes) and len(palette) != len(classes):
            out.append(f"'palette' has {len(palette)} colours for {len(classes)} classes")
    if "reduce_zero_label" in meta and not isinstance(meta["reduce_zero_label"], bool):
        out.append(f"'reduce_zero_label' must be true or false, got {meta['reduce_zero_label']!r}")
    if "ignore_index" in meta and not (_is_int(meta["ignore_index"]) and 0 <= meta["ignore_index"] <= 65535):
        out.append(f"'ignore_index' must be an integer 0..65535, got {meta['ignore_index']!r}")
    order = meta.get("class_order")
    if order is not None and not (isinstance(order, str) and order) and not (_str_list(order) and order):
        out.append(f"'class_order' must be a file name, a built-in order or a list of names, got {_short(order)}")
    return out


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def validate_dataset_meta(meta: Any, source: str = "dataset.json") -> dict:
    """``meta`` if it is a valid ``dataset.json`` object, else a one-line :class:`DataError`."""
    if not isinstance(meta, dict):
        raise DataError(f"{source}: expected a JSON object with keys {', '.join(KEYS)}, got {type(meta).__name__}")
    problems = _problems(meta)
    if problems:
        raise DataError(f"{source}: {'; '.join(problems)} (known keys: {', '.join(KEYS)}; see docs/datasets.md)")
    return meta


def read_dataset_json(root: str | Path) -> dict:
    """The checked ``root/dataset.json`` ({} when there is none)."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e
    return validate_dataset_meta(meta, str(path))


def check_layout(meta: dict, allowed: tuple[str, ...], source: str, default: str | None = None) -> str | None:
    """``meta['layout']`` (or ``default``) if it is one of ``allowed``, else a one-line DataError."""
    layout = meta.get("layout", default)
    if layout is not None and layout not in allowed:
        raise DataError(f"{source}/dataset.json says layout {layout!r}, but this reader takes "
                        f"{', '.join(allowed)}")
    return layout

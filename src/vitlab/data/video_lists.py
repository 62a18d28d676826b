"""Video datasets given by annotation lists, as the official UniFormer / SlowFast code reads them.

Layouts (``--data NAME:PATH``; ``docs/datasets.md`` shows each with an example):

* ``kinetics400`` / ``kinetics600`` / ``video-list`` (layout ``kinetics`` / ``video-list``): ``PATH/train.csv``
  and ``PATH/val.csv`` (or ``test.csv``) in either form
  - ``path label`` lines (SlowFast: space separated; UniFormer's lists: ``path,label``), the path relative
    to ``PATH`` (or the ``video_root`` option), the label an index or a class name;
  - the official Kinetics CSV (header ``label,youtube_id,time_start,time_end,split[,is_cc]``): the video
    is ``<split>/<label>/<id>_<start:06d>_<end:06d>.mp4`` (ActivityNet's downloader), or the same
    without the label folder (the CVDF copy), or ``<id>.mp4``, with or without the ``<split>/`` folder.
* ``ssv2`` (layout ``ssv2``): ``something-something-v2-{labels,train,validation}.json`` (or
  ``labels.json`` / ``train.json`` / ``validation.json``); an entry's ``template`` with its ``[...]``
  brackets removed is looked up in the labels JSON (template -> index), as SlowFast's ``ssv2.py`` does;
  videos are ``<id>.webm`` (any video extension) in ``20bn-something-something-v2/``, ``videos/`` or
  ``PATH``; with option ``media: frames``, frame folders ``<frames_root>/<id>/``.
* ``frame-list`` (layout ``frame-list``, Something-Something V1 and TSM-style lists): lines
  ``<video_id> <num_frames> <label>`` in ``train.txt`` / ``val.txt`` (or ``*_videofolder.txt``); frames
  ``<frames_root>/<video_id>/00001.jpg`` ... (option ``image_template``, 1-based; ``frames_root`` defaults
  to ``20bn-something-something-v1/``, ``frames/`` or ``PATH``).

Class order (what label index i means; it must match the checkpoint's): the ``class_order`` option, else
``class_order`` / ``classes`` in ``PATH/dataset.json``, else ``PATH/classes.txt`` or ``PATH/category.txt``
(not for SSv2), else the layout's default: ``uniformer-k400`` / ``uniformer-k600`` for the Kinetics names (the order of
UniFormer's released weights, :mod:`vitlab.data.class_names`), the labels JSON for SSv2, and otherwise the
class names sorted (or ``"0"``, ``"1"``, ... for numeric labels). Refused, each in one line naming the file
and line: a label that is not in the class order, a class-order file that lists a name (or index) twice. A
video (or frame) that is missing at load time is skipped and named, like an unreadable image.
"""
from __future__ import annotations

import csv
import difflib
import json
import os
import re
from pathlib import Path

import torch

from vitlab.errors import DataError

from .class_names import BUILTIN_CLASS_ORDERS
from .dataset_meta import check_layout, read_dataset_json
from .registry import DataRequest, DatasetBundle
from .video import VIDEO_EXTENSIONS, VideoClipDataset, build_clip_datasets

_KEY_DROP = re.compile(r"[()\[\]']")


def class_key(name: str) -> str:
    """The form class names are compared in: lower case, ``_`` as a space, no brackets or apostrophes."""
    return " ".join(_KEY_DROP.sub("", str(name)).replace("_", " ").lower().split())


class ClassOrder:
    """Class names in label order; :meth:`index` finds a name whatever its spelling (:func:`class_key`)."""

    def __init__(self, names, source: str):
        self.names, self.source = [str(n) for n in names], source
        if not self.names:
            raise DataError(f"class order {source} is empty")
        self._index: dict[str, int] = {}
        for i, name in enumerate(self.names):
            key = class_key(name)
            if key in self._index:
                j = self._index[key]
                raise DataError(f"class order {source} lists {self.names[j]!r} twice (entries {j} and {i}); "
                                f"each class must appear once")
            self._index[key] = i

    def __len__(self) -> int:
        return len(self.names)

    def describe(self) -> str:
        return f"{self.source} ({len(self)} classes)"

    def index(self, label, where: str) -> int:
        """The index of ``label`` (a name, or an int / digit string within range); DataError naming ``where``."""
        if isinstance(label, int) or (isinstance(label, str) and label.strip().isdigit()):
            i = int(label)
            if not 0 <= i < len(self):
                raise DataError(f"{where}: label {i} is outside the class order {self.describe()}")
            return i
        key = class_key(label)
        if key in self._index:
            return self._index[key]
        close = difflib.get_close_matches(key, list(self._index), n=1, cutoff=0.8)
        hint = f"; did you mean {self.names[self._index[close[0]]]!r}?" if close else ""
        raise DataError(f"{where}: label {label!r} is not in the class order {self.describe()}{hint}")


def read_class_order_file(path: str | Path) -> ClassOrder:
    """A class-order file: names one a line, ``name<TAB>index`` or ``name index`` lines, or a JSON list or object."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"class order file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"class order file {path}: not valid JSON ({e})") from e
        if isinstance(data, list) and all(isinstance(n, str) for n in data):
            return ClassOrder(data, str(path))
        if isinstance(data, dict) and all(isinstance(v, int) or (isinstance(v, str) and v.isdigit())
                                          for v in data.values()):
            return _indexed([(str(k), int(v), f"key {k!r}") for k, v in data.items()], path)
        raise DataError(f"class order file {path}: expected a JSON list of names or an object name -> index")
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    pairs = [re.fullmatch(r"(.*?\S)[\t ,]+(\d+)", line) for _, line in lines]
    if lines and all(pairs):
        return _indexed([(m.group(1), int(m.group(2)), f"line {n}") for (n, _), m in zip(lines, pairs)], path)
    return ClassOrder([line for _, line in lines], str(path))


def _indexed(entries: list[tuple[str, int, str]], path: Path) -> ClassOrder:
    by_index: dict[int, tuple[str, str]] = {}
    for name, i, where in entries:
        if i in by_index:
            raise DataError(f"class order file {path} gives index {i} to both {by_index[i][0]!r} ({by_index[i][1]}) "
                            f"and {name!r} ({where}); each index must appear once")
        by_index[i] = (name, where)
    missing = sorted(set(range(len(entries))) - set(by_index))
    if missing:
        raise DataError(f"class order file {path}: indices must run 0..{len(entries) - 1}; "
                        f"{', '.join(map(str, missing[:5]))} missing")
    return ClassOrder([by_index[i][0] for i in range(len(entries))], str(path))


ORDER_FILES = ("classes.txt", "category.txt")


def resolve_class_order(req: DataRequest, root: Path, meta: dict, default: str | None = None,
                        discover: bool = True) -> ClassOrder | None:
    """The class order of this request (see the module docstring); None means "sorted names".

    ``discover``: look for :data:`ORDER_FILES` in ``root`` (not for SSv2, whose labels JSON is the order).
    """
    spec = req.options.get("class_order", meta.get("class_order", meta.get("classes")))
    if spec is None and discover:
        found = [root / f for f in ORDER_FILES if (root / f).is_file()]
        spec = str(found[0]) if found else default
    if spec is None or spec == "alphabetical":
        return None
    if isinstance(spec, (list, tuple)):
        return ClassOrder(spec, f"{root / 'dataset.json'} classes" if "class_order" not in req.options
                          else "the class_order option")
    if spec in BUILTIN_CLASS_ORDERS:
        return ClassOrder(BUILTIN_CLASS_ORDERS[spec], spec)
    path = Path(spec) if os.path.isabs(spec) else root / spec
    if not path.is_file():
        raise DataError(f"class_order {spec!r}: no file {path}, and not a built-in order "
                        f"({', '.join([*BUILTIN_CLASS_ORDERS, 'alphabetical'])})")
    return read_class_order_file(path)


# ---- list files ------------------------------------------------------------------------------------------

def _first(root: Path, names, option: str | None, what: str) -> Path | None:
    if option:
        path = Path(option) if os.path.isabs(option) else root / option
        if not path.is_file():
            raise DataError(f"{what} list {path} does not exist")
        return path
    return next((root / n for n in names if (root / n).is_file()), None)


def _read_rows(path: Path) -> list[tuple[str, str, str]]:
    """``(path, label, where)`` of a ``path label`` / ``path,label`` list."""
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        sep = "," if "," in line else ("\t" if "\t" in line else None)
        parts = line.rsplit(sep, 1)
        if len(parts) != 2 or not parts[0].strip():
            raise DataError(f"{path} line {n}: expected 'path label' (or 'path,label'), got {line!r}")
        rows.append((parts[0].strip(), parts[1].strip(), f"{path.name} line {n}"))
    return rows


def _is_kinetics_csv(path: Path) -> bool:
    with open(path, encoding="utf-8") as f:
        header = f.readline()
    return "youtube_id" in header.split(",")


def _kinetics_rows(path: Path, video_root: Path):
    """``(candidate paths, label or None, where)`` of an official Kinetics CSV."""
    out = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = {"youtube_id", "time_start", "time_end"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: the Kinetics CSV needs columns youtube_id, time_start, time_end "
                            f"(missing {', '.join(sorted(missing))})")
        split_dir = {"validate": "val", "validation": "val"}.get(path.stem, path.stem)
        for n, row in enumerate(reader, 2):
            where = f"{path.name} line {n}"
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except ValueError as e:
                raise DataError(f"{where}: time_start/time_end must be numbers, got {row['time_start']!r}, "
                                f"{row['time_end']!r}") from e
            yid, label = row["youtube_id"], row.get("label")
            clip = f"{yid}_{start:06d}_{end:06d}"
            dirs = list(dict.fromkeys([row.get("split") or split_dir, split_dir, ""]))
            names = []
            for ext in (".mp4",) + tuple(e for e in VIDEO_EXTENSIONS if e != ".mp4"):
                for d in dirs:
                    base = video_root / d if d else video_root
                    names += ([str(base / label / (clip + ext))] if label else []) + \
                             [str(base / (clip + ext)), str(base / (yid + ext))]
            out.append((tuple(names), label, where))
    return out


def _numbered(labels: list[str]) -> bool:
    return all(str(lab).isdigit() for lab in labels)


def _labels(rows, order: ClassOrder | None, names: list[str]) -> list[int]:
    if order is not None:
        return [order.index(lab, where) for _, lab, where in rows]
    index = {n: i for i, n in enumerate(names)}
    return [int(lab) if str(lab).isdigit() else index[lab] for _, lab, _ in rows]


def _default_names(all_rows) -> list[str]:
    labels = [lab for rows in all_rows for _, lab, _ in rows]
    if _numbered(labels):
        return [str(i) for i in range(max(int(lab) for lab in labels) + 1)] if labels else []
    if any(str(lab).isdigit() for lab in labels):
        raise DataError("the lists mix class indices and class names; use one or the other")
    return sorted(set(labels))


def _summary(order: ClassOrder | None, names: list[str]) -> str:
    return order.describe() if order is not None else f"sorted label names ({len(names)} classes)"


def build_video_list(req: DataRequest, layout: str = "video-list", default_order: str | None = None) -> DatasetBundle:
    """``kinetics400`` / ``kinetics600`` / ``video-list``: see the module docstring."""
    root, meta = _root(req, layout)
    check_layout(meta, ("kinetics", "video-list"), str(root))
    o = req.options
    video_root = Path(o.get("video_root") or root)
    video_root = video_root if video_root.is_absolute() else root / video_root
    files = {"train": _first(root, ("train.csv", "train.txt", "train_list.txt"), o.get("train_list"), "train"),
             "val": _first(root, ("val.csv", "val.txt", "validate.csv", "test.csv", "val_list.txt"),
                           o.get("val_list"), "val")}
    _need(files, req, root, "train.csv / val.csv")
    rows = {}
    for split, path in files.items():
        if path is None:
            continue
        if _is_kinetics_csv(path):
            rows[split] = _kinetics_rows(path, video_root)
            unlabelled = [w for _, lab, w in rows[split] if not lab]
            if unlabelled:
                raise DataError(f"{unlabelled[0]}: no label (a test CSV without the label column cannot be "
                                f"trained or scored)")
        else:
            rows[split] = [(str(video_root / p), lab, w) for p, lab, w in _read_rows(path)]
    order = resolve_class_order(req, root, meta, default_order)
    names = order.names if order is not None else _default_names(rows.values())
    splits = {s: ([p for p, _, _ in r], _labels(r, order, names), [w for _, _, w in r]) for s, r in rows.items()}
    bundle = build_clip_datasets(req, splits.get("train"), splits.get("val"), names)
    bundle.info.update(layout=layout, class_order=_summary(order, names),
                       lists=", ".join(str(p.name) for p in files.values() if p is not None))
    return bundle


def build_kinetics400(req: DataRequest) -> DatasetBundle:
    return build_video_list(req, "kinetics", "uniformer-k400")


def build_kinetics600(req: DataRequest) -> DatasetBundle:
    return build_video_list(req, "kinetics", "uniformer-k600")


# ---- Something-Something ------------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e})") from e


def _existing_dir(root: Path, option: str | None, names: tuple[str, ...]) -> Path:
    if option:
        path = Path(option) if os.path.isabs(option) else root / option
        if not path.is_dir():
            raise DataError(f"{path} does not exist")
        return path
    return next((root / n for n in names if (root / n).is_dir()), root)


class FrameFolderClipDataset(VideoClipDataset):
    """Clips from frame folders ``<folder>/<template % (i + start)>``; ``frame_counts`` None -> count the files."""

    def __init__(self, *args, image_template: str = "{:05d}.jpg", frame_start: int = 1, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_template, self.frame_start = image_template, frame_start

    def path(self, idx: int) -> str:
        folder = self.files[idx]
        if not os.path.isdir(folder):
            where = f" ({self.sources[idx]})" if self.sources else ""
            raise FileNotFoundError(f"frame folder not found{where}")
        return folder

    def frame_count(self, idx: int) -> int:
        if self._counts[idx] is None:
            suffix = Path(self.image_template.format(1)).suffix.lower()
            self._counts[idx] = sum(1 for f in os.listdir(self.path(idx)) if f.lower().endswith(suffix))
        if self._counts[idx] < 1:
            raise ValueError(f"no frames in {self.files[idx]}")
        return self._counts[idx]

    def read_frames(self, idx: int, indices: torch.Tensor) -> torch.Tensor:
        from .folder import load_image
        folder, cache, frames = self.path(idx), {}, []
        for i in indices.tolist():
            if i not in cache:
                f = os.path.join(folder, self.image_template.format(i + self.frame_start))
                if not os.path.isfile(f):
                    raise FileNotFoundError(f"frame {f} not found ({self._counts[idx]} frames listed)")
                cache[i] = torch.from_numpy(load_image(f, "RGB"))
            frames.append(cache[i])
        return torch.stack(frames)


def _frame_options(req: DataRequest) -> dict:
    o = req.options
    return {"image_template": str(o.get("image_template", "{:05d}.jpg")), "frame_start": int(o.get("frame_start", 1))}


def build_ssv2(req: DataRequest) -> DatasetBundle:
    """Something-Something V2 from its JSON files (see the module docstring)."""
    root, meta = _root(req, "ssv2")
    check_layout(meta, ("ssv2",), str(root))
    req = _uniform(req)
    o = req.options
    labels_file = _first(root, ("something-something-v2-labels.json", "labels.json"), o.get("labels_file"), "labels")
    files = {"train": _first(root, ("something-something-v2-train.json", "train.json"), o.get("train_list"), "train"),
             "val": _first(root, ("something-something-v2-validation.json", "validation.json"), o.get("val_list"),
                           "validation")}
    _need(files, req, root, "something-something-v2-train.json / -validation.json")
    order = resolve_class_order(req, root, meta, discover=False)
    if order is None:
        if labels_file is None:
            raise DataError(f"{root}: no something-something-v2-labels.json (template -> index) and no class_order")
        order = read_class_order_file(labels_file)  # template -> index
    media = str(o.get("media", "video"))
    if media not in ("video", "frames"):
        raise DataError(f"ssv2: option media must be 'video' or 'frames', got {media!r}")
    if media == "video":
        vdir = _existing_dir(root, o.get("video_root"), ("20bn-something-something-v2", "videos"))
    else:
        vdir = _existing_dir(root, o.get("frames_root"), ("frames", "20bn-something-something-v2-frames"))
    splits = {}
    for split, path in files.items():
        if path is None:
            continue
        entries = _read_json(path)
        if not isinstance(entries, list):
            raise DataError(f"{path}: expected a list of {{\"id\", \"template\", ...}} entries")
        paths, labels, where = [], [], []
        for i, e in enumerate(entries):
            w = f"{path.name} entry {i}"
            if not isinstance(e, dict) or "id" not in e or "template" not in e:
                raise DataError(f"{w}: expected an object with 'id' and 'template', got {str(e)[:80]}")
            vid = str(e["id"])
            labels.append(order.index(e["template"].replace("[", "").replace("]", ""), w))
            paths.append(tuple(str(vdir / (vid + ext)) for ext in dict.fromkeys((".webm",) + VIDEO_EXTENSIONS))
                         if media == "video" else str(vdir / vid))
            where.append(f"{w}, id {vid}")
        splits[split] = (paths, labels, where)
    extra = {} if media == "video" else {"dataset_class": FrameFolderClipDataset, **_frame_options(req)}
    bundle = build_clip_datasets(req, splits.get("train"), splits.get("val"), order.names, **extra)
    bundle.info.update(layout="ssv2", class_order=order.describe(), media=media)
    return bundle


def build_frame_list(req: DataRequest) -> DatasetBundle:
    """``<video_id> <num_frames> <label>`` lists over frame folders (Something-Something V1)."""
    root, meta = _root(req, "frame-list")
    check_layout(meta, ("frame-list",), str(root))
    req = _uniform(req)
    o = req.options
    files = {"train": _first(root, ("train.txt", "train_videofolder.txt"), o.get("train_list"), "train"),
             "val": _first(root, ("val.txt", "val_videofolder.txt"), o.get("val_list"), "val")}
    _need(files, req, root, "train.txt / val.txt")
    frames_root = _existing_dir(root, o.get("frames_root"), ("20bn-something-something-v1", "frames"))
    rows = {}
    for split, path in files.items():
        if path is None:
            continue
        rows[split] = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 3 or not parts[1].isdigit():
                raise DataError(f"{path} line {n}: expected '<video_id> <num_frames> <label>', got {line.strip()!r}")
            rows[split].append((parts[0], int(parts[1]), parts[2], f"{path.name} line {n}"))
    order = resolve_class_order(req, root, meta)
    flat = {s: [(vid, lab, w) for vid, _, lab, w in r] for s, r in rows.items()}
    names = order.names if order is not None else _default_names(flat.values())
    splits, counts = {}, {}
    for s, r in rows.items():
        splits[s] = ([str(frames_root / vid) for vid, _, _, _ in r], _labels(flat[s], order, names),
                     [f"{w}, video {vid}" for vid, _, _, w in r])
        counts[s] = [n for _, n, _, _ in r]
    bundle = build_clip_datasets(req, splits.get("train"), splits.get("val"), names,
                                 counts=(counts.get("train"), counts.get("val")),
                                 dataset_class=FrameFolderClipDataset, **_frame_options(req))
    bundle.info.update(layout="frame-list", class_order=_summary(order, names))
    return bundle


# ---- shared --------------------------------------------------------------------------------------------------

def _root(req: DataRequest, layout: str) -> tuple[Path, dict]:
    if not req.root:
        raise DataError(f"the {layout} layout needs a path: --data {req.name}:PATH")
    root = Path(req.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    return root, read_dataset_json(root)


def _need(files: dict, req: DataRequest, root: Path, names: str) -> None:
    missing = [s for s in req.splits if s in files and files[s] is None]
    if missing:
        raise DataError(f"{root}: no {' / '.join(missing)} list ({names}; or the {missing[0]}_list option)")


def _uniform(req: DataRequest) -> DataRequest:
    """Something-Something is sampled one frame per segment unless the options say otherwise."""
    if "sampling" in req.options:
        return req
    return DataRequest(**{**req.__dict__, "options": {**req.options, "sampling": "uniform"}})


def build_layout(req: DataRequest, layout: str) -> DatasetBundle:
    """Read ``req.root`` in a video ``layout`` named by its ``dataset.json``."""
    builders = {"kinetics": build_video_list, "video-list": build_video_list, "ssv2": build_ssv2,
                "frame-list": build_frame_list}
    if layout not in builders:
        raise DataError(f"{req.root}/dataset.json: layout {layout!r} is not a video layout "
                        f"({', '.join(['video-folder', *builders])})")
    if layout == "kinetics":
        return build_video_list(req, "kinetics")
    return builders[layout](req)

"""Where the segmentation benchmarks keep their files, and what each brings by default.

===================== ================================================================ ====================
layout (``--data``)   files (``split``: training / validation)                          defaults
===================== ================================================================ ====================
(none: a folder)      ``images/<split>/*.jpg|png`` + ``annotations/<split>/<name>.png``  none
``ade20k``            the same (ADEChallengeData2016)                                   150 classes, palette,
                                                                                        reduce_zero_label
``coco-stuff10k``     converted (mmseg's ``coco_stuff10k.py`` output):                  171 classes, palette,
                      ``images/{train2014,test2014}/*.jpg`` +                           reduce_zero_label
                      ``annotations/.../<name>_labelTrainIds.png`` (or ``<name>.png``);
                      or the release as it unpacks: ``images/*.jpg``,
                      ``annotations/<name>.mat`` (or ``annotations_mat/``),
                      ``imageLists/{train,test}.txt``; the ``.mat`` label maps are read
                      with scipy and mapped as the converter does
``pascal-context``    ``JPEGImages/<id>.jpg`` + ``SegmentationClassContext/<id>.png``,  60 classes (0 =
                      ``ImageSets/SegmentationContext/{train,val}.txt``; the root is    background)
                      ``VOC2010`` (or a folder holding ``VOCdevkit/VOC2010``)
``pascal-context-59`` the same                                                          59 classes,
                                                                                        background ignored
===================== ================================================================ ====================

The names, palettes and the COCO-Stuff mapping are in :mod:`vitlab.data.seg_classes`. ``dataset.json``
(:mod:`vitlab.data.dataset_meta`) may name the layout (so ``vitlab segment train --data PATH`` reads it)
and overrides the defaults key by key. :func:`convert_coco_stuff10k` writes the converted layout once
(PNG label maps 0..171, as mmseg's converter), which reads faster than the ``.mat`` files.
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from vitlab.errors import DataError

from . import seg_classes as sc
from .dataset_meta import check_layout, read_dataset_json
from .registry import DataRequest, DatasetBundle

SPLITS = {"training": ("training", "train"), "validation": ("validation", "val", "test")}


def canonical_split(split: str) -> str:
    for name, aliases in SPLITS.items():
        if split in aliases:
            return name
    raise ValueError(f"segmentation split must be one of {', '.join(a for v in SPLITS.values() for a in v)}, "
                     f"got {split!r}")


@dataclass(frozen=True)
class SegLayout:
    name: str | None
    defaults: dict = field(default_factory=dict)


LAYOUTS: dict[str | None, SegLayout] = {
    None: SegLayout(None),
    "ade20k": SegLayout("ade20k", {"classes": list(sc.ADE20K_CLASSES), "palette": [list(c) for c in sc.ADE20K_PALETTE],
                                   "reduce_zero_label": True}),
    "coco-stuff10k": SegLayout("coco-stuff10k", {"classes": list(sc.COCO_STUFF_CLASSES),
                                                 "palette": [list(c) for c in sc.COCO_STUFF_PALETTE],
                                                 "reduce_zero_label": True}),
    "pascal-context": SegLayout("pascal-context", {"classes": list(sc.PASCAL_CONTEXT_CLASSES),
                                                   "palette": [list(c) for c in sc.PASCAL_CONTEXT_PALETTE],
                                                   "reduce_zero_label": False}),
    "pascal-context-59": SegLayout("pascal-context-59", {"classes": list(sc.PASCAL_CONTEXT_59_CLASSES),
                                                         "palette": [list(c) for c in sc.PASCAL_CONTEXT_59_PALETTE],
                                                         "reduce_zero_label": True}),
}


def layout_meta(layout: str | None, meta: dict) -> dict:
    """The layout's defaults overridden by ``dataset.json``'s keys (a default palette goes with default classes)."""
    if layout not in LAYOUTS:
        raise DataError(f"unknown segmentation layout {layout!r}; expected one of "
                        f"{', '.join(n for n in LAYOUTS if n)}")
    merged = {k: list(v) if isinstance(v, list) else v for k, v in {**LAYOUTS[layout].defaults, **meta}.items()}
    if "classes" in meta and "palette" not in meta and len(merged.get("palette") or []) != len(meta["classes"]):
        merged.pop("palette", None)
    return merged


# ---- finding the files ------------------------------------------------------------------------------------

def _pairs_missing(images: list[Path], labels: list[Path]) -> None:
    missing = [(i, lab) for i, lab in zip(images, labels) if not lab.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} label file(s) missing, e.g. {missing[0][1]} "
                                f"(for image {missing[0][0]})")


def _folder_pairs(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    from .segmentation import IMAGE_SUFFIXES, _split_dir
    img_dir, ann_dir = _split_dir(root, "images", split), _split_dir(root, "annotations", split)
    images = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {img_dir}")
    labels = [ann_dir / (p.stem + ".png") for p in images]
    _pairs_missing(images, labels)
    return images, labels


def _mat_dir(root: Path) -> Path:
    return next((root / d for d in ("annotations", "annotations_mat") if any((root / d).glob("*.mat"))),
                root / "annotations")


def _coco_stuff_pairs(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    sub = "train2014" if canonical_split(split) == "training" else "test2014"
    if (root / "images" / sub).is_dir():  # the converted layout
        images = sorted(p for p in (root / "images" / sub).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if not images:
            raise FileNotFoundError(f"no images in {root / 'images' / sub}")
        ann = root / "annotations" / sub
        labels = [ann / f"{p.stem}_labelTrainIds.png" if (ann / f"{p.stem}_labelTrainIds.png").is_file()
                  else ann / f"{p.stem}.png" for p in images]
        _pairs_missing(images, labels)
        return images, labels
    list_file = root / "imageLists" / ("train.txt" if sub == "train2014" else "test.txt")
    if not list_file.is_file():
        raise FileNotFoundError(f"{root} is not in the COCO-Stuff-10K layout: expected images/{sub}/ (converted) or "
                                f"imageLists/{list_file.name} with images/*.jpg and annotations/*.mat (the release)")
    names = [n.strip() for n in list_file.read_text().splitlines() if n.strip()]
    images = [root / "images" / f"{n}.jpg" for n in names]
    absent = [p for p in images if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) of {list_file} missing, e.g. {absent[0]}")
    mats = _mat_dir(root)
    labels = [mats / f"{n}.mat" for n in names]
    _pairs_missing(images, labels)
    return images, labels


def pascal_context_root(root: Path) -> Path:
    for cand in (root, root / "VOC2010", root / "VOCdevkit" / "VOC2010"):
        if (cand / "SegmentationClassContext").is_dir():
            return cand
    raise FileNotFoundError(f"{root} is not in the PASCAL-Context layout: expected SegmentationClassContext/, "
                            f"JPEGImages/ and ImageSets/SegmentationContext/ in it (or in VOCdevkit/VOC2010/)")


def _pascal_context_pairs(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    voc = pascal_context_root(root)
    list_file = voc / "ImageSets" / "SegmentationContext" / ("train.txt" if canonical_split(split) == "training"
                                                             else "val.txt")
    if not list_file.is_file():
        raise FileNotFoundError(f"PASCAL-Context split list {list_file} does not exist (mmseg's pascal_context.py "
                                f"converter writes it)")
    names = [n.strip() for n in list_file.read_text().splitlines() if n.strip()]
    images = [voc / "JPEGImages" / f"{n}.jpg" for n in names]
    absent = [p for p in images if not p.is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} image(s) of {list_file} missing, e.g. {absent[0]}")
    labels = [voc / "SegmentationClassContext" / f"{n}.png" for n in names]
    _pairs_missing(images, labels)
    return images, labels


def find_pairs(layout: str | None, root: Path, split: str) -> tuple[list[Path], list[Path]]:
    """(images, label files) of ``split`` in ``layout``."""
    if layout == "coco-stuff10k":
        return _coco_stuff_pairs(root, split)
    if layout in ("pascal-context", "pascal-context-59"):
        return _pascal_context_pairs(root, split)
    return _folder_pairs(root, split)


# ---- COCO-Stuff-10K .mat label maps -----------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _coco_stuff_lut() -> np.ndarray:
    lut = np.zeros(65536, np.uint8)  # ids the table does not know (never in the release) -> 0 = unlabelled
    for cid, train in sc.COCO_STUFF10K_ID_TO_TRAIN_ID.items():
        lut[cid] = train
    return lut


def read_coco_stuff_mat(path: Path) -> np.ndarray:
    """A COCO-Stuff-10K ``.mat`` file's ``S`` mapped to 0..171 (0 = unlabelled) as (H, W) int64."""
    try:
        from scipy.io import loadmat
    except ImportError as e:  # scikit-learn depends on scipy, so this is rare
        raise DataError(f"{path}: reading COCO-Stuff .mat label maps needs scipy (pip install scipy), or convert "
                        f"them elsewhere with mmseg's tools/convert_datasets/coco_stuff10k.py") from e
    from .segmentation import SegmentationDataError
    try:
        data = loadmat(str(path))
    except (ValueError, OSError, TypeError) as e:
        raise SegmentationDataError(f"{path}: not a readable MATLAB file ({e})") from e
    if "S" not in data or np.ndim(data["S"]) != 2:
        raise SegmentationDataError(f"{path}: expected a 2-D label matrix 'S' (COCO-Stuff-10K), found "
                                    f"{sorted(k for k in data if not k.startswith('__'))}")
    s = np.asarray(data["S"])
    if s.min() < 0 or s.max() > 65535:
        raise SegmentationDataError(f"{path}: label values {int(s.min())}..{int(s.max())} are not COCO ids")
    return _coco_stuff_lut()[s.astype(np.int64)].astype(np.int64)


def convert_coco_stuff10k(root: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the converted layout (mmseg's): ``out/images/{train2014,test2014}/*.jpg`` (hard links, or copies)
    and ``out/annotations/.../<name>_labelTrainIds.png`` with values 0..171. ``out`` defaults to ``root``."""
    from PIL import Image
    root = Path(root)
    out = Path(out) if out is not None else root
    for split, sub in (("training", "train2014"), ("validation", "test2014")):
        images, mats = _coco_stuff_pairs(root, split)
        (out / "images" / sub).mkdir(parents=True, exist_ok=True)
        (out / "annotations" / sub).mkdir(parents=True, exist_ok=True)
        for img, mat in zip(images, mats):
            target = out / "images" / sub / img.name
            if not target.exists():
                try:
                    os.link(img, target)
                except OSError:
                    shutil.copyfile(img, target)
            label = read_coco_stuff_mat(mat).astype(np.uint8)
            Image.fromarray(label, mode="L").save(out / "annotations" / sub / f"{img.stem}_labelTrainIds.png")
    return out


# ---- --data builders ----------------------------------------------------------------------------------------

def build_layout_dataset(req: DataRequest, layout: str | None) -> DatasetBundle:
    """Training (mmseg augmentation) and validation :class:`SegmentationFolder` s of ``req.root`` in ``layout``."""
    from .segmentation import SegAugment, SegmentationFolder
    if not req.root:
        raise DataError(f"--data {req.name} needs a path: --data {req.name}:PATH")
    root = Path(req.root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    layout = check_layout(read_dataset_json(root), (layout,) if layout else tuple(n for n in LAYOUTS if n),
                          str(root), default=layout)
    o = req.options
    common = dict(layout=layout, reduce_zero_label=o.get("reduce_zero_label"), ignore_index=o.get("ignore_index"),
                  num_classes=o.get("num_classes"))
    val = SegmentationFolder(root, "validation", **common) if "val" in req.splits else None
    train = None
    if "train" in req.splits:
        probe = val or SegmentationFolder(root, "training", **common)
        aug = SegAugment(crop_size=int(o.get("crop_size", req.input_size[-1])), scale=o.get("scale"),
                         ratio_range=tuple(o.get("ratio_range", (0.5, 2.0))),
                         cat_max_ratio=float(o.get("cat_max_ratio", 0.75)), flip_prob=float(o.get("flip_prob", 0.5)),
                         photometric=bool(o.get("photometric", True)), ignore_index=probe.ignore_index)
        train = SegmentationFolder(root, "training", augment=aug, **common)
    ref = val or train
    return DatasetBundle(train=train, val=val, class_names=list(ref.class_names), input_kind="mask", in_chans=3,
                         info={"layout": layout or "folder", "reduce_zero_label": ref.reduce_zero_label,
                               "ignore_index": ref.ignore_index, "palette": ref.palette})


def build_ade20k(req: DataRequest) -> DatasetBundle:
    return build_layout_dataset(req, "ade20k")


def build_coco_stuff10k(req: DataRequest) -> DatasetBundle:
    return build_layout_dataset(req, "coco-stuff10k")


def build_pascal_context(req: DataRequest) -> DatasetBundle:
    return build_layout_dataset(req, "pascal-context")


def build_pascal_context_59(req: DataRequest) -> DatasetBundle:
    return build_layout_dataset(req, "pascal-context-59")

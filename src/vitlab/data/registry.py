"""The datasets ``--data NAME`` knows: an explicit table of built-in builders, plus user plug-ins.

A *builder* is called as ``builder(request)`` with a :class:`DataRequest` and returns a
:class:`DatasetBundle`. The built-in ones are listed in :data:`BUILTIN_DATASETS` and imported only
when asked for; ``register_dataset(name, builder)`` adds another::

    from vitlab.data.registry import DatasetBundle, register_dataset

    def build_my_clips(req):                    # req.root, req.input_size, req.seed, req.options, ...
        train = MyClipDataset(req.root, "train", transform=req.train_transform)
        val = MyClipDataset(req.root, "val", transform=req.eval_transform)
        return DatasetBundle(train=train, val=val, class_names=train.classes, input_kind="video")

    register_dataset("my-clips", build_my_clips, input_kind="video")

Each dataset item is ``(input, target)``; ``input`` is a tensor (``(C, H, W)`` images, ``(C, T, H, W)``
clips, ``(V, C, T, H, W)`` evaluation views) and ``target`` an int class index (-1 for unlabelled
images). A training set that sets ``seeded = True`` receives ``(index, seed)`` keys (see
:class:`vitlab.data.datasets.SeededDataset`): augmentation then follows the sample's seed, which
makes it independent of the loader workers and resumes exact. An item may be a
:class:`vitlab.data.folder.Skipped` (an unreadable file): the loaders drop it and report its name.
``DatasetBundle.predict`` replaces ``model(x)`` during evaluation (e.g. averaging clip views).
"""
from __future__ import annotations

import difflib
import importlib
import os
from dataclasses import dataclass, field
from typing import Any, Callable

from vitlab.errors import DataError

INPUT_KINDS = ("image", "video", "mask")

# name -> (module, builder function, input kind, help)
BUILTIN_DATASETS: dict[str, tuple[str, str, str, str]] = {
    "animal-mnist": ("vitlab.data.builtin_sets", "build_animal_mnist", "image",
                     "10 animal silhouette classes, 28x28 grayscale (shipped in the animal-mnist wheel)"),
    "digits": ("vitlab.data.builtin_sets", "build_digits", "image", "scikit-learn's handwritten digits, 8x8 grayscale"),
    "folder": ("vitlab.data.builtin_sets", "build_folder", "image",
               "an image folder: PATH/<class>/*.jpg, or PATH/train + PATH/val (ImageNet layout)"),
    "images": ("vitlab.data.builtin_sets", "build_unlabelled_images", "image",
               "every image under PATH, no labels (self-supervised pretraining)"),
    "texture-scenes": ("vitlab.data.builtin_sets", "build_texture_scene_images", "image",
                       "built-in texture-mosaic scenes (8 textures, 128 px), labelled by the dominant texture; "
                       "the segmentation task reads their exact masks"),
    "video-folder": ("vitlab.data.video", "build_video_folder", "video",
                     "videos in PATH/{train,val}/<class>/ (or PATH/<class>/); options: num_frames, stride, sampling, "
                     "test_clips, test_crops, hflip"),
    "synthetic-video": ("vitlab.data.synthetic_video", "build_synthetic_video_dataset", "video",
                        "built-in synthetic videos (6 motion classes, 64 px, 16 frames), generated once into a cache"),
    "kinetics400": ("vitlab.data.video_lists", "build_kinetics400", "video",
                    "Kinetics-400: PATH/{train,val}.csv ('path label' lines or the official youtube_id CSV); "
                    "class order of UniFormer's weights unless class_order says otherwise"),
    "kinetics600": ("vitlab.data.video_lists", "build_kinetics600", "video",
                    "Kinetics-600, as kinetics400 (UniFormer's K600 class order by default)"),
    "video-list": ("vitlab.data.video_lists", "build_video_list", "video",
                   "any 'path label' lists: PATH/{train,val}.csv; class order from class_order, classes.txt or sorted"),
    "ssv2": ("vitlab.data.video_lists", "build_ssv2", "video",
             "Something-Something V2: something-something-v2-{labels,train,validation}.json + <id>.webm videos"),
    "frame-list": ("vitlab.data.video_lists", "build_frame_list", "video",
                   "frame folders <id>/00001.jpg with 'id num_frames label' lists (Something-Something V1)"),
    "ade20k": ("vitlab.data.seg_layouts", "build_ade20k", "mask",
               "ADE20K: images/ + annotations/{training,validation}; 150 classes, reduce_zero_label"),
    "coco-stuff10k": ("vitlab.data.seg_layouts", "build_coco_stuff10k", "mask",
                      "COCO-Stuff-10K: converted PNGs or the release's .mat files; 171 classes"),
    "pascal-context": ("vitlab.data.seg_layouts", "build_pascal_context", "mask",
                       "PASCAL-Context (VOC2010 + SegmentationClassContext), 60 classes with background"),
    "pascal-context-59": ("vitlab.data.seg_layouts", "build_pascal_context_59", "mask",
                          "PASCAL-Context, 59 classes, background ignored (reduce_zero_label)"),
}


@dataclass
class DataRequest:
    """What a task asks a dataset builder for."""
    name: str                                   # the registered name (``--data NAME[:PATH]``)
    root: str | None = None                     # PATH part of ``--data NAME:PATH`` or ``data.root``
    input_size: tuple[int, ...] = (3, 224, 224)  # what the model expects, (C, H, W) or (C, T, H, W)
    train_transform: Callable | None = None     # ``transform(uint8 CHW tensor, generator) -> sample``
    eval_transform: Callable | None = None
    seed: int = 0
    splits: tuple[str, ...] = ("train", "val")  # which splits are needed (evaluation asks only for "val")
    options: dict[str, Any] = field(default_factory=dict)  # the free-form ``data.options`` section


@dataclass
class DatasetBundle:
    """What a dataset builder returns; ``class_names`` is empty for unlabelled data."""
    train: Any | None
    val: Any | None
    class_names: list[str]
    input_kind: str = "image"
    in_chans: int | None = None                 # channels of the inputs (1 for grayscale built-ins)
    mean: tuple[float, ...] | None = None       # normalisation to use instead of the model's pretrained_cfg
    std: tuple[float, ...] | None = None
    predict: Callable | None = None             # ``predict(model, inputs) -> logits`` for evaluation
    info: dict[str, Any] = field(default_factory=dict)  # reported in the log (duplicates moved, files skipped)

    def __post_init__(self):
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {self.input_kind!r}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def labelled(self) -> bool:
        return bool(self.class_names)


@dataclass
class DatasetEntry:
    name: str
    builder: Callable[[DataRequest], DatasetBundle]
    input_kind: str
    help: str


_PLUGINS: dict[str, DatasetEntry] = {}


def register_dataset(name: str, builder: Callable[[DataRequest], DatasetBundle], input_kind: str = "image",
                     help: str = "") -> None:
    """Make ``--data NAME`` available; ``builder(DataRequest) -> DatasetBundle``."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got {input_kind!r}")
    if name in BUILTIN_DATASETS:
        raise ValueError(f"dataset name {name!r} is built in; choose another name")
    _PLUGINS[name] = DatasetEntry(name, builder, input_kind, help)


def list_datasets() -> list[str]:
    return sorted([*BUILTIN_DATASETS, *_PLUGINS])


class _RegistryKeyError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def _unknown(name: str) -> KeyError:
    known = list_datasets()
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    msg = f"unknown dataset {name!r}"
    if close:
        msg += f"; did you mean {', '.join(close)}?"
    return _RegistryKeyError(msg + f" Available: {', '.join(known)}; or give an image folder path.")


def get_dataset_entry(name: str) -> DatasetEntry:
    if name in _PLUGINS:
        return _PLUGINS[name]
    if name not in BUILTIN_DATASETS:
        raise _unknown(name)
    module, attr, kind, text = BUILTIN_DATASETS[name]
    return DatasetEntry(name, getattr(importlib.import_module(module), attr), kind, text)


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """``"animal-mnist"`` -> (name, None); ``"folder:path/to/imgs"`` -> ("folder", path); a bare path -> folder."""
    if spec in BUILTIN_DATASETS or spec in _PLUGINS:
        return spec, None
    if ":" in spec:
        name, root = spec.split(":", 1)
        if name in BUILTIN_DATASETS or name in _PLUGINS:
            return name, root
    if os.path.isdir(spec):
        return "folder", spec
    if os.path.exists(spec):
        raise DataError(f"--data {spec!r} is a file; expected a dataset name or an image folder")
    raise _unknown(spec)


def build_dataset(request: DataRequest) -> DatasetBundle:
    """Look up ``request.name`` and call its builder, checking what it returns."""
    bundle = get_dataset_entry(request.name).builder(request)
    if not isinstance(bundle, DatasetBundle):
        raise TypeError(f"dataset builder for {request.name!r} returned {type(bundle).__name__}, "
                        f"expected a DatasetBundle")
    return bundle

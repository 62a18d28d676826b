"""Video classification data: PyAV decoding, frame sampling, clip transforms, multi-view testing.

* Frame sampling (pure functions returning frame indices):
  - ``dense``: ``num_frames`` frames ``stride`` apart from a random start (training) or from
    ``num_clips`` evenly spaced starts (testing) - the Kinetics protocol (e.g. 16x4 = 16 frames, stride 4);
  - ``uniform``: the video cut into ``num_frames`` equal segments, one frame from each (random
    position in training, the same relative position in every segment for each test clip) - the
    Something-Something protocol.
* Clip transforms take uint8 (T, H, W, C) frames and return normalised float (C, T, H, W):
  training = short-side scale jitter + random crop (+ optional horizontal flip, off by default:
  it changes the meaning of direction-dependent classes); testing = short-side resize + 1 or 3
  spatial crops.
* Multi-view testing: ``num_clips`` x ``num_crops`` views per video, shaped (V, C, T, H, W);
  :func:`multi_view_predict` averages the views' softmax scores.

``--data video-folder:PATH`` reads ``PATH/train/<class>/*.mp4`` and ``PATH/val/<class>/*`` (or a
seeded split of ``PATH/<class>/*``); ``--task video`` trains on it (:mod:`vitlab.tasks.video`). A
``PATH/dataset.json`` (:mod:`vitlab.data.dataset_meta`) may give the class order (``class_order`` or
``classes``: label i = the i-th name, so the indices match a released checkpoint; every class folder
must be in it) or name a list layout (``kinetics``, ``video-list``, ``ssv2``, ``frame-list``), which is
then read by :mod:`vitlab.data.video_lists`.

A video that is missing or cannot be decoded comes back as a :class:`~vitlab.data.folder.Skipped`
(the file and why, one line); the loaders drop it and the run names it, as for image folders.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .datasets import SeededDataset
from .folder import Skipped
from .registry import DataRequest, DatasetBundle

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
KINETICS_MEAN, KINETICS_STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)


def _rand_int(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (1,), generator=generator)) if high > 0 else 0


def dense_indices(video_frames: int, num_frames: int, stride: int = 1, clip_index: int | None = None,
                  num_clips: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
    """``num_frames`` indices ``stride`` apart; short videos repeat their last frame."""
    if video_frames < 1:
        raise ValueError("the video has no frames")
    span = (num_frames - 1) * stride + 1
    slack = max(video_frames - span, 0)
    if clip_index is None:
        start = _rand_int(slack + 1, generator)
    else:
        # one clip: the centre; several: evenly spaced from the first to the last possible start
        start = round(slack * clip_index / (num_clips - 1)) if num_clips > 1 else slack // 2
    return (start + torch.arange(num_frames) * stride).clamp_(max=video_frames - 1)


def uniform_indices(video_frames: int, num_frames: int, clip_index: int | None = None, num_clips: int = 1,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """One index per equal segment: random in training, at offset (clip_index + 0.5) / num_clips when testing."""
    if video_frames < 1:
        raise ValueError("the video has no frames")
    seg = video_frames / num_frames
    if clip_index is None:
        offsets = torch.rand(num_frames, generator=generator)
    else:
        offsets = torch.full((num_frames,), (clip_index + 0.5) / num_clips)
    idx = (torch.arange(num_frames) * seg + offsets * seg).floor().long()
    return idx.clamp_(0, video_frames - 1)


def sample_indices(mode: str, video_frames: int, num_frames: int, stride: int, clip_index=None, num_clips=1,
                   generator=None) -> torch.Tensor:
    if mode == "dense":
        return dense_indices(video_frames, num_frames, stride, clip_index, num_clips, generator)
    if mode == "uniform":
        return uniform_indices(video_frames, num_frames, clip_index, num_clips, generator)
    raise ValueError(f"frame sampling must be 'dense' or 'uniform', got {mode!r}")


def video_frame_count(path) -> int:
    """Frames in the first video stream (container metadata, or a full decode when it is missing)."""
    import av
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        if stream.frames:
            return int(stream.frames)
        return sum(1 for _ in container.decode(stream))


def read_video_frames(path, indices: torch.Tensor | None = None) -> torch.Tensor:
    """Decode the wanted frames (all when ``indices`` is None) as uint8 (T, H, W, 3); stops after the last one."""
    import av
    wanted = None if indices is None else indices.tolist()
    last = None if wanted is None else max(wanted)
    frames = []
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(container.decode(stream)):
                frames.append(torch.from_numpy(frame.to_ndarray(format="rgb24")))
                if last is not None and i >= last:
                    break
    except (av.error.FFmpegError, IndexError) as e:
        raise ValueError(f"cannot decode video {path}: {e}") from e
    if not frames:
        raise ValueError(f"video {path} has no decodable frames")
    if wanted is None:
        return torch.stack(frames)
    return torch.stack([frames[min(i, len(frames) - 1)] for i in wanted])  # metadata may over-count


def _resize_short(clip: torch.Tensor, short: int) -> torch.Tensor:
    """(C, T, H, W) float -> short side ``short`` (bilinear, antialiased)."""
    C, T, H, W = clip.shape
    scale = short / min(H, W)
    size = (max(short, round(H * scale)), max(short, round(W * scale)))
    if size == (H, W):
        return clip
    frames = clip.transpose(0, 1)  # (T, C, H, W)
    frames = F.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=True)
    return frames.transpose(0, 1)


@dataclass
class ClipTransform:
    """uint8 (T, H, W, C) frames -> normalised float (C, T, H, W) views (see the module docstring)."""
    size: int
    train: bool
    mean: tuple = KINETICS_MEAN
    std: tuple = KINETICS_STD
    scale_range: tuple = (256 / 224, 320 / 224)   # short side, relative to the crop (SlowFast's 256-320 for 224)
    hflip: float = 0.0
    num_crops: int = 1

    def _normalise(self, clip: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean[:clip.shape[0]]).view(-1, 1, 1, 1)
        std = torch.tensor(self.std[:clip.shape[0]]).view(-1, 1, 1, 1)
        return (clip - mean) / std

    def __call__(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        clip = frames.permute(3, 0, 1, 2).float().div_(255.0)  # (C, T, H, W)
        s = self.size
        if self.train:
            lo, hi = self.scale_range
            short = round(s * (lo + (hi - lo) * float(torch.rand(1, generator=generator))))
            clip = _resize_short(clip, max(short, s))
            H, W = clip.shape[-2:]
            y, x = _rand_int(H - s + 1, generator), _rand_int(W - s + 1, generator)
            clip = clip[..., y:y + s, x:x + s]
            if self.hflip and float(torch.rand(1, generator=generator)) < self.hflip:
                clip = clip.flip(-1)
            return self._normalise(clip)
        clip = _resize_short(clip, s)
        H, W = clip.shape[-2:]
        views = []
        for i in range(self.num_crops):  # along the long side: left/top, centre, right/bottom
            frac = 0.5 if self.num_crops == 1 else i / (self.num_crops - 1)
            y, x = (round((H - s) * frac), (W - s) // 2) if H > W else ((H - s) // 2, round((W - s) * frac))
            views.append(self._normalise(clip[..., y:y + s, x:x + s]))
        return torch.stack(views)  # (num_crops, C, T, s, s)


def _decode_errors() -> tuple[type[BaseException], ...]:
    """What a missing, truncated or foreign file raises while it is decoded (PyAV's own base class included)."""
    try:
        import av
        return (ValueError, OSError, av.error.FFmpegError)
    except ImportError:
        return (ValueError, OSError)


class VideoClipDataset(SeededDataset):
    """Videos + labels -> clips. Training: one random clip; testing: ``num_clips`` x crops views (V, C, T, H, W).

    ``files[i]`` is a path, or a tuple of candidate paths (the first that exists is used: list layouts
    whose file names vary between downloads); ``sources[i]`` says where the entry came from (e.g.
    ``"train.csv line 12"``) in the message of a missing file. A video that is missing or does not
    decode is returned as a :class:`~vitlab.data.folder.Skipped`.
    """

    def __init__(self, files: list, labels: list[int], transform: ClipTransform, num_frames: int = 8,
                 stride: int = 4, sampling: str = "dense", num_clips: int = 1, frame_counts: list[int] | None = None,
                 sources: list[str] | None = None):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} videos but {len(labels)} labels")
        sample_indices(sampling, 1, 1, 1)  # validates ``sampling``
        self.files = [tuple(str(c) for c in f) if isinstance(f, (tuple, list)) else str(f) for f in files]
        self.labels, self.transform = list(labels), transform
        self.num_frames, self.stride, self.sampling, self.num_clips = num_frames, stride, sampling, num_clips
        self._counts = list(frame_counts) if frame_counts is not None else [None] * len(files)
        self.sources = list(sources) if sources is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def name(self, idx: int) -> str:
        """The (first candidate) path of sample ``idx``, for messages."""
        f = self.files[idx]
        return f[0] if isinstance(f, tuple) else f

    def path(self, idx: int) -> str:
        """The file of sample ``idx``; FileNotFoundError (one line, with the entry's source) when absent."""
        f = self.files[idx]
        for candidate in (f if isinstance(f, tuple) else (f,)):
            if os.path.isfile(candidate):
                if isinstance(f, tuple):
                    self.files[idx] = candidate  # resolved once
                return candidate
        where = f" ({self.sources[idx]})" if self.sources else ""
        tried = ""
        if isinstance(f, tuple) and len(f) > 1:
            tried = f"; also tried {', '.join(f[1:4])}{' ...' if len(f) > 4 else ''}"
        raise FileNotFoundError(f"video not found{where}{tried}")

    def frame_count(self, idx: int) -> int:
        if self._counts[idx] is None:
            self._counts[idx] = video_frame_count(self.path(idx))
        return self._counts[idx]

    def read_frames(self, idx: int, indices: torch.Tensor) -> torch.Tensor:
        """uint8 (T, H, W, 3) frames ``indices`` of sample ``idx``."""
        return read_video_frames(self.path(idx), indices)

    def load(self, idx: int, generator: torch.Generator | None):
        try:
            return self._load(idx, generator)
        except FileNotFoundError as e:
            return Skipped(self.name(idx), str(e))
        except _decode_errors() as e:  # undecodable
            return Skipped(self.name(idx), f"{type(e).__name__}: {e}")

    def _load(self, idx: int, generator: torch.Generator | None):
        n = self.frame_count(idx)
        if self.transform.train:
            ids = sample_indices(self.sampling, n, self.num_frames, self.stride, None, 1, generator)
            return self.transform(self.read_frames(idx, ids), generator), self.labels[idx]
        clips = [sample_indices(self.sampling, n, self.num_frames, self.stride, c, self.num_clips)
                 for c in range(self.num_clips)]
        everything = torch.unique(torch.cat(clips))
        frames = self.read_frames(idx, everything)
        lookup = {int(f): i for i, f in enumerate(everything)}
        views = [self.transform(frames[[lookup[int(f)] for f in ids]]) for ids in clips]
        views = torch.cat(views)  # (clips * crops, C, T, H, W)
        return (views[0] if len(views) == 1 else views), self.labels[idx]


def multi_view_predict(model, x: torch.Tensor) -> torch.Tensor:
    """(B, V, C, T, H, W) views -> log of the views' mean softmax (a (B, C, T, H, W) batch passes through)."""
    if x.ndim != 6:
        return model(x)
    B, V = x.shape[:2]
    logits = model(x.flatten(0, 1))
    probs = logits.float().softmax(-1).view(B, V, -1).mean(1)
    return probs.clamp_min(1e-12).log()


def scan_video_folder(root: Path, class_order=None) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of ``root/<class>/*``; classes sorted, or in ``class_order``'s order.

    ``class_order`` (a :class:`vitlab.data.video_lists.ClassOrder`) numbers the classes as a checkpoint
    does: every class folder must be in it, and the class names are all of its names.
    """
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<video>.mp4)")
    if class_order is None:
        classes, index = folders, {name: i for i, name in enumerate(folders)}
    else:
        classes = list(class_order.names)
        index = {name: class_order.index(name, f"class folder {root / name}") for name in folders}
    files, labels = [], []
    for name in folders:
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in VIDEO_EXTENSIONS:
                files.append(f)
                labels.append(index[name])
    if not files:
        raise ValueError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) found under {root}")
    return files, labels, classes


def video_options(req: DataRequest) -> dict:
    """The ``data.options`` a video dataset understands, with defaults."""
    o = req.options
    return {"num_frames": int(o.get("num_frames", 8)), "stride": int(o.get("stride", 4)),
            "sampling": str(o.get("sampling", "dense")), "test_clips": int(o.get("test_clips", 1)),
            "test_crops": int(o.get("test_crops", 1)), "hflip": float(o.get("hflip", 0.0)),
            "val_fraction": float(o.get("val_fraction", 0.1))}


def build_clip_datasets(req: DataRequest, train_split, val_split, class_names, counts=(None, None),
                        mean=KINETICS_MEAN, std=KINETICS_STD, dataset_class=None, **extra) -> DatasetBundle:
    """Wrap (files, labels[, sources]) splits into training / multi-view testing datasets.

    ``dataset_class`` (default :class:`VideoClipDataset`) is built with ``extra`` keyword arguments.
    """
    o = video_options(req)
    size = req.input_size[-1]
    common = dict(num_frames=o["num_frames"], stride=o["stride"], sampling=o["sampling"], **extra)
    cls = dataset_class or VideoClipDataset
    train = val = None
    if "train" in req.splits and train_split is not None:
        t = ClipTransform(size, True, mean, std, hflip=o["hflip"])
        train = cls(*train_split[:2], t, frame_counts=counts[0], sources=_sources(train_split), **common)
    if "val" in req.splits and val_split is not None:
        t = ClipTransform(size, False, mean, std, num_crops=o["test_crops"])
        val = cls(*val_split[:2], t, num_clips=o["test_clips"], frame_counts=counts[1], sources=_sources(val_split),
                  **common)
    return DatasetBundle(train=train, val=val, class_names=list(class_names), input_kind="video",
                         in_chans=3, mean=tuple(mean), std=tuple(std), predict=multi_view_predict,
                         info={"views": o["test_clips"] * o["test_crops"], "num_frames": o["num_frames"],
                               "sampling": o["sampling"]})


def _sources(split) -> list[str] | None:
    return list(split[2]) if len(split) > 2 and split[2] is not None else None


def build_video_folder(req: DataRequest) -> DatasetBundle:
    if not req.root:
        raise ValueError("video-folder needs a path: --data video-folder:PATH")
    root = Path(req.root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist")
    from . import video_lists
    from .dataset_meta import read_dataset_json
    meta = read_dataset_json(root)
    layout = meta.get("layout", "video-folder")
    if layout != "video-folder":
        return video_lists.build_layout(req, layout)
    order = video_lists.resolve_class_order(req, root, meta)
    bundle = _folder_splits(req, root, order)
    if order is not None:
        bundle.info["class_order"] = order.describe()
    return bundle


def _folder_splits(req: DataRequest, root: Path, order) -> DatasetBundle:
    if (root / "train").is_dir() and (root / "val").is_dir():
        tr_files, tr_labels, classes = scan_video_folder(root / "train", order)
        va_files, va_labels, va_classes = scan_video_folder(root / "val", order)
        if va_classes != classes:
            raise ValueError(f"{root}/val has classes {va_classes} but {root}/train has {classes}")
        return build_clip_datasets(req, (tr_files, tr_labels), (va_files, va_labels), classes)
    files, labels, classes = scan_video_folder(root, order)
    frac = video_options(req)["val_fraction"]
    # a stable split: by a hash of the file name, independent of the listing order
    is_val = [zlib.crc32(f"{req.seed}/{f.name}".encode()) % 1000 < frac * 1000 for f in files]
    pick = lambda flag: ([f for f, v in zip(files, is_val) if v == flag],  # noqa: E731
                         [lab for lab, v in zip(labels, is_val) if v == flag])
    return build_clip_datasets(req, pick(False), pick(True), classes)


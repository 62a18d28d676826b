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
seeded split of ``PATH/<class>/*``); ``--task video`` trains on it (:mod:`vitlab.tasks.video`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .datasets import SeededDataset
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


class VideoClipDataset(SeededDataset):
    """Videos + labels -> clips. Training: one random clip; testing: ``num_clips`` x crops views (V, C, T, H, W)."""

    def __init__(self, files: list, labels: list[int], transform: ClipTransform, num_frames: int = 8,
                 stride: int = 4, sampling: str = "dense", num_clips: int = 1, frame_counts: list[int] | None = None):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} videos but {len(labels)} labels")
        sample_indices(sampling, 1, 1, 1)  # validates ``sampling``
        self.files, self.labels, self.transform = [str(f) for f in files], list(labels), transform
        self.num_frames, self.stride, self.sampling, self.num_clips = num_frames, stride, sampling, num_clips
        self._counts = list(frame_counts) if frame_counts is not None else [None] * len(files)

    def __len__(self) -> int:
        return len(self.files)

    def _count(self, idx: int) -> int:
        if self._counts[idx] is None:
            self._counts[idx] = video_frame_count(self.files[idx])
        return self._counts[idx]

    def load(self, idx: int, generator: torch.Generator | None):
        n = self._count(idx)
        if self.transform.train:
            ids = sample_indices(self.sampling, n, self.num_frames, self.stride, None, 1, generator)
            return self.transform(read_video_frames(self.files[idx], ids), generator), self.labels[idx]
        clips = [sample_indices(self.sampling, n, self.num_frames, self.stride, c, self.num_clips)
                 for c in range(self.num_clips)]
        everything = torch.unique(torch.cat(clips))
        frames = read_video_frames(self.files[idx], everything)
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


def scan_video_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<video>.mp4)")
    files, labels = [], []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.suffix.lower() in VIDEO_EXTENSIONS:
                files.append(f)
                labels.append(label)
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
                        mean=KINETICS_MEAN, std=KINETICS_STD) -> DatasetBundle:
    """Wrap (files, labels) splits into training / multi-view testing datasets."""
    o = video_options(req)
    size = req.input_size[-1]
    common = dict(num_frames=o["num_frames"], stride=o["stride"], sampling=o["sampling"])
    train = val = None
    if "train" in req.splits and train_split is not None:
        t = ClipTransform(size, True, mean, std, hflip=o["hflip"])
        train = VideoClipDataset(*train_split, t, frame_counts=counts[0], **common)
    if "val" in req.splits and val_split is not None:
        t = ClipTransform(size, False, mean, std, num_crops=o["test_crops"])
        val = VideoClipDataset(*val_split, t, num_clips=o["test_clips"], frame_counts=counts[1], **common)
    return DatasetBundle(train=train, val=val, class_names=list(class_names), input_kind="video",
                         in_chans=3, mean=tuple(mean), std=tuple(std), predict=multi_view_predict,
                         info={"views": o["test_clips"] * o["test_crops"], "num_frames": o["num_frames"],
                               "sampling": o["sampling"]})


def build_video_folder(req: DataRequest) -> DatasetBundle:
    if not req.root:
        raise ValueError("video-folder needs a path: --data video-folder:PATH")
    root = Path(req.root)
    if not root.is_dir():
        raise FileNotFoundError(f"video folder {root} does not exist")
    if (root / "train").is_dir() and (root / "val").is_dir():
        tr_files, tr_labels, classes = scan_video_folder(root / "train")
        va_files, va_labels, va_classes = scan_video_folder(root / "val")
        if va_classes != classes:
            raise ValueError(f"{root}/val has classes {va_classes} but {root}/train has {classes}")
        return build_clip_datasets(req, (tr_files, tr_labels), (va_files, va_labels), classes)
    files, labels, classes = scan_video_folder(root)
    frac = video_options(req)["val_fraction"]
    # a stable split: by a hash of the file name, independent of the listing order
    is_val = [zlib.crc32(f"{req.seed}/{f.name}".encode()) % 1000 < frac * 1000 for f in files]
    pick = lambda flag: ([f for f, v in zip(files, is_val) if v == flag],  # noqa: E731
                         [lab for lab, v in zip(labels, is_val) if v == flag])
    return build_clip_datasets(req, pick(False), pick(True), classes)


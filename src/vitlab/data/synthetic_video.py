"""A built-in synthetic video set whose classes exist only in time (``--data synthetic-video``).

Six classes: a random asymmetric shape moving left / right / up / down, or turning clockwise /
counter-clockwise in place. Shape, size, colours, orientation, start position and speed are
random, and moving shapes cover the whole frame over a video, so no single frame tells the
class apart; a model must compare frames. Videos are generated deterministically from a seed
and written as real H.264 (or MPEG-4) files through PyAV, so training exercises the same decode
path as a video folder. The set is built once into a cache folder (written atomically).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .registry import DataRequest, DatasetBundle

CLASSES = ("move_left", "move_right", "move_up", "move_down", "turn_clockwise", "turn_counterclockwise")
DIRECTIONS = {"move_left": (-1, 0), "move_right": (1, 0), "move_up": (0, -1), "move_down": (0, 1)}
VERSION = 1


def _shape_vertices(kind: int, radius: float) -> np.ndarray:
    """Unit shapes without rotational symmetry (so turning is visible): L, arrowhead, kite, flag."""
    shapes = [
        [(-1, -1), (0, -1), (0, 0.3), (1, 0.3), (1, 1), (-1, 1)],
        [(-1, -0.8), (1, 0), (-1, 0.8), (-0.4, 0)],
        [(0, -1), (0.45, -0.1), (0, 1), (-0.9, -0.1)],
        [(-1, -1), (1, -0.5), (-0.2, 0), (-0.2, 1), (-1, 1)],
    ]
    return np.asarray(shapes[kind], dtype=np.float64) * radius


def render_video(label: int, rng: np.random.Generator, frames: int = 16, size: int = 64) -> np.ndarray:
    """One clip of class ``label`` as uint8 (frames, size, size, 3)."""
    from PIL import Image, ImageDraw
    name = CLASSES[label]
    radius = rng.uniform(0.12, 0.2) * size
    verts = _shape_vertices(int(rng.integers(4)), radius)
    angle0 = rng.uniform(0, 2 * math.pi)
    fg = rng.integers(140, 256, 3)
    bg_a, bg_b = rng.integers(0, 110, 3), rng.integers(0, 110, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    background = (bg_a * (1 - ramp) + bg_b * ramp) * np.ones((size, size, 3))
    if name in DIRECTIONS:
        dx, dy = DIRECTIONS[name]
        speed = rng.uniform(0.6, 1.0) * (size - 2 * radius) / (frames - 1)  # crosses most of the frame
        travel = speed * (frames - 1)
        along = rng.uniform(radius, size - radius - travel) if travel < size - 2 * radius else radius
        across = rng.uniform(radius, size - radius)
        start = (along, across) if dx else (across, along)
        if dx < 0 or dy < 0:  # moving towards 0: start at the mirrored position
            start = (size - start[0], start[1]) if dx else (start[0], size - start[1])
        centres = [(start[0] + dx * speed * t, start[1] + dy * speed * t) for t in range(frames)]
        angles = [angle0] * frames
    else:
        spin = rng.uniform(0.2, 0.35) * (1 if name == "turn_clockwise" else -1)  # radians per frame (y down)
        centre = (rng.uniform(radius * 1.2, size - radius * 1.2), rng.uniform(radius * 1.2, size - radius * 1.2))
        centres = [centre] * frames
        angles = [angle0 + spin * t for t in range(frames)]
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        c, s = math.cos(angles[t]), math.sin(angles[t])
        pts = verts @ np.array([[c, s], [-s, c]]) + np.asarray(centres[t])
        img = Image.fromarray(np.clip(background + rng.normal(0, 6, background.shape), 0, 255).astype(np.uint8))
        ImageDraw.Draw(img).polygon([tuple(p) for p in pts], fill=tuple(int(v) for v in fg))
        out[t] = np.asarray(img)
    return out


def write_video(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """Encode uint8 (T, H, W, 3) frames with PyAV (H.264 when available, else MPEG-4)."""
    import av
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "12", "preset": "fast"} if codec == "libx264" else {}
        if codec == "mpeg4":
            stream.bit_rate = 4_000_000
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def default_cache_dir() -> Path:
    base = os.environ.get("VITLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "vitlab")
    return Path(base) / "synthetic-video"


def build_synthetic_videos(root: Path | None = None, per_class_train: int = 48, per_class_val: int = 16,
                           frames: int = 16, size: int = 64, seed: int = 0) -> Path:
    """Generate (once) ``root/{train,val}/<class>/NNNN.mp4``; returns the folder. Same arguments -> same videos."""
    spec = dict(version=VERSION, per_class_train=per_class_train, per_class_val=per_class_val, frames=frames,
                size=size, seed=seed)
    digest = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:10]
    root = Path(root) if root else default_cache_dir() / digest
    if (root / "spec.json").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".synthetic-video-", dir=root.parent))
    try:
        for split, count, offset in (("train", per_class_train, 0), ("val", per_class_val, 1)):
            for label, name in enumerate(CLASSES):
                folder = tmp / split / name
                folder.mkdir(parents=True)
                for i in range(count):
                    rng = np.random.default_rng([seed, offset, label, i])
                    write_video(folder / f"{i:04d}.mp4", render_video(label, rng, frames, size))
        (tmp / "spec.json").write_text(json.dumps(spec, indent=1))
        if root.exists() and not (root / "spec.json").is_file():
            shutil.rmtree(root)  # a stale half-written folder of an older layout
        try:
            os.replace(tmp, root)
        except OSError:
            if not (root / "spec.json").is_file():  # not another process that finished first
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def build_synthetic_video_dataset(req: DataRequest) -> DatasetBundle:
    from .video import build_video_folder
    o = req.options
    root = build_synthetic_videos(req.root, int(o.get("per_class_train", 48)), int(o.get("per_class_val", 16)),
                                  int(o.get("video_frames", 16)), int(o.get("video_size", 64)),
                                  int(o.get("generator_seed", 0)))
    options = {"num_frames": 8, "stride": 2, **o}
    bundle = build_video_folder(DataRequest(**{**req.__dict__, "root": str(root), "options": options}))
    bundle.info["root"] = str(root)
    return bundle


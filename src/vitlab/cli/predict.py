"""``vitlab predict MODEL INPUTS...``: run a model on image files, folders or videos.

``MODEL`` is a registered name (weights from ``--checkpoint``), a model folder or a run folder; the
class names come from the folder's ``config.json`` (``label_names``; indices when there are none) and the
preprocessing is the folder's own (:func:`vitlab.data.transforms.build_eval_transform` on the model's
``pretrained_cfg``). Folders are read recursively in sorted order; unreadable files are skipped and
named on stderr.

* classification: the top-k classes and probabilities per image (a table, ``--json``, ``--csv FILE``);
* video (``uniformer_video*``): clips of ``num_frames`` frames sampled as the video evaluation does
  (the run's ``data.options``: frames, stride, sampling), the top-k per clip and of the clips' mean
  softmax;
* segmentation (SegViT, UperNet, Semantic FPN): per image a label PNG of class indices
  (``DIR/masks/``) and an overlay PNG (image | prediction, legend of the classes present;
  ``DIR/overlays/``) in ``-o DIR``, with the model's test mode
  (whole / slide, as ``vitlab segment eval``).

``-o DIR`` is claimed as a run folder: one that already holds files is refused without ``--overwrite``.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

from .common import MODEL_HELP, add_flags, set_threads

COMMAND = "predict"
HELP = "predict with a model: top-k classes of images / videos, or segmentation masks + overlays"

MAX_AUTO_CLIPS = 10


def add_arguments(p) -> None:
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("inputs", metavar="INPUTS", nargs="+", help="image files, folders (read recursively) or videos")
    add_flags(p, "output", "overwrite", "checkpoint", "batch_size", "device", "threads", "json",
              output={"help": "output folder (required for segmentation models: masks and overlays; else "
                              "predictions.json and predictions.csv)"},
              batch_size={"help": "images (or clips) per forward pass (default 16)"})
    p.add_argument("--topk", type=int, default=5, metavar="K", help="classes shown per image / clip (default 5)")
    p.add_argument("--csv", metavar="FILE", help="also write the top-k rows as CSV (file, clip, rank, index, class, "
                                                  "probability)")
    p.add_argument("--clips", type=int, metavar="N",
                   help=f"clips per video (default: enough to cover it, at least the run's test clips, at most "
                        f"{MAX_AUTO_CLIPS})")


# --- what the model is ---------------------------------------------------------------------------------

def model_kind(model) -> str:
    """'segmentation', 'video' or 'classification'."""
    from vitlab.models.registry import family_of
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    name = getattr(model, "model_name", "")
    family = ""
    try:
        family = family_of(name) if name else ""
    except Exception:  # a name the registry does not know (a model built by hand)
        pass
    if cfg.get("task") == "segmentation" or family in ("segvit", "upernet", "semantic_fpn"):
        return "segmentation"
    if family.startswith("uniformer_video") or len(cfg.get("input_size", ())) == 4:
        return "video"
    return "classification"


def _run_config(spec: str) -> dict:
    """The ``config.yaml`` of a run folder (``{}`` for a model folder or a name)."""
    from vitlab.checkpoints.hub import model_folder
    from vitlab.engine.config import load_yaml
    path = Path(spec)
    if not path.is_dir() or model_folder(path) == path or not (path / "config.yaml").is_file():
        return {}
    return load_yaml(path / "config.yaml") or {}


def class_names(model) -> list[str]:
    names = getattr(model, "label_names", None)
    n = int(getattr(model, "num_classes", 0) or 0)
    if names and len(names) == n:
        return [str(x) for x in names]
    return [str(i) for i in range(n)]


# --- inputs --------------------------------------------------------------------------------------------

def collect_inputs(inputs: list[str], extensions: tuple[str, ...]) -> list[tuple[Path, str]]:
    """(file, output name without extension) for every input: files as given, folders recursively and sorted
    (hidden entries left out; the name keeps the path below the folder). Names are made unique."""
    found: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append((path, path.stem))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in extensions and p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not files:
                raise FileNotFoundError(f"no {'/'.join(e.lstrip('.') for e in extensions)} files under {path}")
            found += [(f, str(f.relative_to(path).with_suffix(""))) for f in files]
        else:
            raise FileNotFoundError(f"input {item} does not exist")
    seen: dict[str, int] = {}
    unique = []
    for f, name in found:
        key = name
        while key in seen:
            seen[name] += 1
            key = f"{name}_{seen[name]}"
        seen[key] = 0
        unique.append((f, key))
    return unique


def _progress(items, what: str):
    """A tqdm bar on a terminal; the items unchanged when piped."""
    if not sys.stderr.isatty() or len(items) < 2:
        return items
    from tqdm import tqdm
    return tqdm(items, desc=what, unit=what.split()[-1], file=sys.stderr, leave=False)


def _skip(skipped: list[dict], path: Path, reason: str) -> None:
    skipped.append({"file": str(path), "reason": reason})
    print(f"skipped {path}: {reason}", file=sys.stderr)


def _top(probs, k: int, names: list[str]) -> list[dict]:
    values, indices = probs.topk(min(k, probs.numel()))
    return [{"index": int(i), "class": names[int(i)], "probability": float(v)} for v, i in zip(values, indices)]


# --- classification ------------------------------------------------------------------------------------

def predict_images(model, files, device, names, k: int, batch_size: int) -> tuple[list[dict], list[dict]]:
    """(one row per readable image with its top-k, the skipped files)."""
    import torch

    from vitlab.data.folder import UNREADABLE_ERRORS, load_image
    from vitlab.data.transforms import build_eval_transform
    transform = build_eval_transform(model.pretrained_cfg)
    rows, skipped, batch = [], [], []

    def flush():
        if not batch:
            return
        x = torch.stack([t for _, t in batch]).to(device)
        with torch.inference_mode():
            probs = model(x).float().softmax(-1).cpu()
        for (path, _), p in zip(batch, probs):
            rows.append({"file": str(path), "top": _top(p, k, names)})
        batch.clear()

    for path, _ in _progress(files, "predict images"):
        try:
            img = load_image(str(path), "RGB")
        except UNREADABLE_ERRORS as e:
            _skip(skipped, path, f"{type(e).__name__}: {e}")
            continue
        batch.append((path, transform(img)))
        if len(batch) >= batch_size:
            flush()
    flush()
    return rows, skipped


# --- video ---------------------------------------------------------------------------------------------

def clip_settings(model, run_cfg: dict, clips: int | None) -> dict:
    """Frames per clip, stride, sampling and clip count: the run's data.options, else the model's num_frames."""
    options = ((run_cfg.get("data") or {}).get("options") or {})
    cfg = model.pretrained_cfg
    num_frames = int(options.get("num_frames") or cfg.get("num_frames") or cfg["input_size"][1])
    return {"num_frames": num_frames, "stride": int(options.get("stride", 4)),
            "sampling": str(options.get("sampling", "dense")), "test_clips": int(options.get("test_clips", 1)),
            "clips": clips}


def predict_videos(model, files, device, names, k: int, batch_size: int, settings: dict):
    """(one row per readable video: the top-k of each clip and of the clips' mean softmax, the skipped files)."""
    import torch

    from vitlab.data.video import ClipTransform, _decode_errors, read_video_frames, sample_indices, \
        video_frame_count
    cfg = model.pretrained_cfg
    transform = ClipTransform(int(cfg["input_size"][-1]), False, tuple(cfg["mean"]), tuple(cfg["std"]), num_crops=1)
    T, stride, sampling = settings["num_frames"], settings["stride"], settings["sampling"]
    span = (T - 1) * stride + 1 if sampling == "dense" else T
    rows, skipped = [], []
    for path, _ in _progress(files, "predict videos"):
        try:
            n = video_frame_count(path)
            count = settings["clips"] or min(max(settings["test_clips"], math.ceil(n / span)), MAX_AUTO_CLIPS)
            ids = [sample_indices(sampling, n, T, stride, c, count) for c in range(count)]
            wanted = torch.unique(torch.cat(ids))
            frames = read_video_frames(path, wanted)
        except _decode_errors() as e:
            _skip(skipped, path, f"{type(e).__name__}: {e}")
            continue
        lookup = {int(f): i for i, f in enumerate(wanted)}
        views = torch.cat([transform(frames[[lookup[int(f)] for f in clip]]) for clip in ids])  # (clips, C, T, H, W)
        with torch.inference_mode():
            probs = torch.cat([model(views[i:i + batch_size].to(device)).float().softmax(-1).cpu()
                               for i in range(0, len(views), batch_size)])
        rows.append({"file": str(path), "frames": n, "top": _top(probs.mean(0), k, names),
                     "clips": [{"clip": c, "frames": [int(ids[c].min()), int(ids[c].max())], "top": _top(p, k, names)}
                               for c, p in enumerate(probs)]})
    return rows, skipped


# --- segmentation --------------------------------------------------------------------------------------

def seg_settings(model, spec: str) -> dict:
    """The test-time ``seg`` section: the run's (mode, crop, stride) over the defaults, as ``segment eval`` reads it."""
    from vitlab.engine.config import put
    from vitlab.tasks import make_config
    layers = []
    saved = _run_config(spec)
    if saved:
        layers.append((f"{spec}/config.yaml", {k: v for k, v in saved.items() if k in ("task", "seg")}))
    flags: dict = {}
    put(flags, "seg.test_scales", [1.0])
    put(flags, "seg.test_flip", False)
    layers.append(("vitlab predict", flags))
    return make_config("segmentation", layers)["seg"]


def predict_segmentation(model, files, device, names, out: Path, seg: dict, title: str):
    """Write ``masks/<name>.png`` (class indices, the image's size) and ``overlays/<name>.png`` per image; (rows,
    skipped)."""
    import numpy as np
    import torch

    from vitlab.checkpoints.atomic import atomic_write
    from vitlab.data.folder import UNREADABLE_ERRORS, load_image
    from vitlab.segmentation.visualize import save_overlay
    from vitlab.tasks.segmentation import predict_label_map
    from PIL import Image
    cfg = model.pretrained_cfg
    mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(3, 1, 1) * 255
    std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(3, 1, 1) * 255
    rows, skipped = [], []
    for path, name in _progress(files, "predict images"):
        try:
            img = torch.from_numpy(load_image(str(path), "RGB").copy()).permute(2, 0, 1)
        except UNREADABLE_ERRORS as e:
            _skip(skipped, path, f"{type(e).__name__}: {e}")
            continue
        H, W = img.shape[-2:]
        pred = predict_label_map(model, (img.float() - mean) / std, (H, W), seg, device, None).numpy()
        mask_path, overlay_path = out / "masks" / f"{name}.png", out / "overlays" / f"{name}.png"
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        overlay_path.parent.mkdir(parents=True, exist_ok=True)
        mask = Image.fromarray(pred.astype(np.uint8)) if len(names) <= 256 else \
            Image.fromarray(pred.astype(np.int32), mode="I")
        atomic_write(mask_path, lambda p: mask.save(p, format="PNG"))
        save_overlay(overlay_path, img, pred, None, len(names), names, f"{title}: {path.name}")
        present, counts = np.unique(pred, return_counts=True)
        rows.append({"file": str(path), "mask": str(mask_path), "overlay": str(overlay_path), "size": [int(W), int(H)],
                     "classes": [{"index": int(c), "class": names[int(c)], "fraction": float(n / pred.size)}
                                 for c, n in sorted(zip(present, counts), key=lambda t: -t[1])]})
    return rows, skipped


# --- output --------------------------------------------------------------------------------------------

CSV_FIELDS = ("file", "clip", "rank", "index", "class", "probability")


def csv_rows(rows: list[dict]) -> list[dict]:
    """Long format: one line per (file, clip, rank); the clip column is empty for images and ``mean`` for a video's
    average over its clips."""
    out = []
    for row in rows:
        groups = [("" if "clips" not in row else "mean", row["top"])]
        groups += [(str(c["clip"]), c["top"]) for c in row.get("clips", [])]
        for clip, top in groups:
            out += [{"file": row["file"], "clip": clip, "rank": r + 1, "index": t["index"], "class": t["class"],
                     "probability": f"{t['probability']:.6f}"} for r, t in enumerate(top)]
    return out


def write_csv(path: Path, rows: list[dict]) -> None:
    import csv
    import io

    from vitlab.checkpoints.atomic import atomic_write_text
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(rows))
    atomic_write_text(path, buf.getvalue())


def format_table(rows: list[dict]) -> str:
    """One line per (file, clip, rank); the clip column only for videos (``mean``: the clips' average)."""
    video = any("clips" in r for r in rows)
    width = max([len(t["class"]) for r in rows for t in r["top"]] + [5])
    fw = max([len(r["file"]) for r in rows] + [4])
    lines = [f"{'file':<{fw}}  " + ("clip  " if video else "") + f"rank  {'class':<{width}}  probability"]
    for row in rows:
        groups = [("mean" if video else "", row["top"])]
        groups += [(str(c["clip"]), c["top"]) for c in row.get("clips", [])]
        first = True
        for clip, top in groups:
            for r, t in enumerate(top):
                shown = row["file"] if first else ""
                first = False
                lines.append(f"{shown:<{fw}}  " + (f"{clip if r == 0 else '':>4}  " if video else "")
                             + f"{r + 1:>4}  {t['class']:<{width}}  {t['probability']:11.4f}")
    return "\n".join(lines)


def format_segmentation(rows: list[dict]) -> str:
    lines = []
    for row in rows:
        shown = ", ".join(f"{c['class']} {100 * c['fraction']:.1f}%" for c in row["classes"][:6])
        more = f", +{len(row['classes']) - 6} more" if len(row["classes"]) > 6 else ""
        lines.append(f"{row['file']} ({row['size'][0]}x{row['size'][1]}) -> {row['mask']}, {row['overlay']}: "
                     f"{shown}{more}")
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------------

def run(args) -> int:
    from vitlab.checkpoints.atomic import atomic_write_json, to_json
    from vitlab.data.folder import IMAGE_EXTENSIONS
    from vitlab.data.video import VIDEO_EXTENSIONS
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.run_folder import claim_run_folder
    from vitlab.engine.runtime import resolve_device
    from vitlab.errors import VitlabError
    from .common import load_model
    if args.topk < 1:
        raise VitlabError(f"--topk must be at least 1, got {args.topk}")
    if args.batch_size is not None and args.batch_size < 1:
        raise VitlabError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.clips is not None and args.clips < 1:
        raise VitlabError(f"--clips must be at least 1, got {args.clips}")
    missing = [item for item in args.inputs if not Path(item).exists()]
    if missing:
        raise FileNotFoundError(f"input {missing[0]} does not exist" + (f" (and {len(missing) - 1} more)"
                                                                        if len(missing) > 1 else ""))
    set_threads(args.threads)
    model = load_model(args.model, args.checkpoint)
    kind = model_kind(model)
    if kind == "segmentation" and not args.output:
        raise VitlabError(f"{args.model} is a segmentation model: give -o DIR for its masks and overlays")
    if kind == "segmentation" and args.csv:
        raise VitlabError("--csv writes top-k classes; a segmentation model writes masks and overlays into -o DIR")
    files = collect_inputs(args.inputs, VIDEO_EXTENSIONS if kind == "video" else IMAGE_EXTENSIONS)
    if not Path(args.model).is_dir() and not args.checkpoint:
        print("warning: no --checkpoint given; predicting with randomly initialised weights", file=sys.stderr)
    names = class_names(model)
    device = resolve_device(args.device or "auto", DistInfo())
    model.to(device).eval()
    batch = args.batch_size or 16
    title = getattr(model, "model_name", str(args.model))
    folder = claim_run_folder(args.output, overwrite=args.overwrite, resumable=False) if args.output else None
    try:
        if kind == "segmentation":
            rows, skipped = predict_segmentation(model, files, device, names, folder.path,
                                                 seg_settings(model, args.model), title)
        elif kind == "video":
            settings = clip_settings(model, _run_config(args.model), args.clips)
            rows, skipped = predict_videos(model, files, device, names, args.topk, batch, settings)
        else:
            rows, skipped = predict_images(model, files, device, names, args.topk, batch)
        if not rows:
            raise VitlabError(f"none of the {len(files)} inputs could be read (see the skipped lines above)")
        result = {"model": title, "task": kind, "device": str(device), "count": len(rows),
                  **({"topk": args.topk} if kind != "segmentation" else {}), "predictions": rows, "skipped": skipped}
        if folder is not None:
            atomic_write_json(folder.path / "predictions.json", result)
            if kind != "segmentation":
                write_csv(folder.path / "predictions.csv", rows)
    finally:
        if folder is not None:
            folder.release()
    if args.csv:
        write_csv(Path(args.csv), rows)
    if args.json:
        print(to_json(result, indent=2))
    else:
        print(format_segmentation(rows) if kind == "segmentation" else format_table(rows))
        if skipped:
            print(f"({len(skipped)} unreadable input{'s' if len(skipped) > 1 else ''} skipped)")
    return 0

"""``vitlab detect train|eval|predict``: COCO detection and instance segmentation (Mask R-CNN, Cascade).

``detect train`` is ``vitlab train --task detection`` with the detection flags. ``detect eval MODEL``
scores a run folder (its data settings), a model folder or a name with ``--checkpoint`` by pycocotools'
COCOeval; ``detect predict MODEL IMAGES...`` draws boxes, masks and class names on images.
"""
from __future__ import annotations

from .common import add_flags, run_config, set_threads, train_and_report
from .train import RUN_FLAGS, RUN_SWITCHES, add_run_flags

COMMAND = "detect"
HELP = "object detection / instance segmentation: train, evaluate (COCO AP), predict (drawn images)"

FLAGS = {
    **RUN_FLAGS, "img_size": "det.test_scale", "train_scales": "det.train_scales", "max_size": "det.max_size",
    "data_root": "det.data_root", "visualize": "det.visualize", "warmup_steps": "sched.warmup_steps",
}
SWITCHES = {**RUN_SWITCHES, "no_masks": ("det.with_masks", False)}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a detector; writes config.yaml, metrics.jsonl, model/, COCO results")
    add_run_flags(t)
    add_flags(t, "img_size", img_size={"help": "short side for evaluation (det.test_scale)"})
    t.add_argument("--train-scales", type=int, nargs="+", metavar="S", help="training short sides (several: "
                                                                           "multi-scale, e.g. 480 512 ... 800)")
    t.add_argument("--max-size", type=int, help="the long side's limit (1333)")
    t.add_argument("--data-root", help="where the built-in synthetic set is written")
    t.add_argument("--visualize", type=int, help="validation images drawn with their predictions at the end")
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--no-masks", action="store_true", default=None, help="boxes only (no mask head loss)")
    e = sub.add_parser("eval", help="COCO box / mask AP (pycocotools) on the validation split")
    _model_args(e)
    e.add_argument("--limit", type=int, help="evaluate the first N images only")
    e.add_argument("--visualize", type=int, default=0, help="draw this many images into --output")
    p = sub.add_parser("predict", help="detect on images and draw boxes, masks and class names")
    _model_args(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--score-thr", type=float, default=0.3)


def _model_args(p) -> None:
    p.add_argument("model", help="a detect-train run folder, a model folder, or a model name (with --checkpoint)")
    add_flags(p, "checkpoint", "output", "overwrite", "device", "threads", "json", "batch_size", "img_size", "data")
    p.add_argument("--data-root", help="where the built-in synthetic set is written")


def run(args) -> int:
    set_threads(getattr(args, "threads", None))
    if args.action == "train":
        return train_and_report(run_config(args, task="detection", flags=FLAGS, switches=SWITCHES), args)
    return evaluate(args) if args.action == "eval" else predict(args)


def eval_config(args, task: str, section: str, model) -> dict:
    """The run's data settings (a run folder), then the flags; the model's classes are checked against the data."""
    from pathlib import Path

    from vitlab.engine.config import load_yaml, put
    from vitlab.tasks import make_config
    layers = []
    saved = Path(args.model) / "config.yaml"
    if saved.is_file():
        layers.append((str(saved), {k: v for k, v in load_yaml(saved).items() if k in ("task", "data", section)}))
    flags: dict = {}
    for dest, key in (("data", "data.name"), ("data_root", f"{section}.data_root"), ("device", "run.device"),
                      ("batch_size", "data.eval_batch_size"), ("limit", f"{section}.eval_limit")):
        if getattr(args, dest, None) is not None:
            put(flags, key, getattr(args, dest))
    if getattr(args, "img_size", None) and section == "det":
        put(flags, "det.test_scale", args.img_size)
    layers.append(("the command line", flags))
    return make_config(task, layers)


def _model(args):
    import sys
    from pathlib import Path

    from .common import load_model
    model = load_model(args.model, args.checkpoint)
    if not Path(args.model).is_dir() and not args.checkpoint:
        print("warning: no --checkpoint given; evaluating randomly initialised weights", file=sys.stderr)
    return model


def require_output_for_drawings(args) -> None:
    """``eval --visualize N`` writes PNGs, so it needs ``--output``: refuse before the evaluation runs."""
    if getattr(args, "visualize", 0) and not args.output:
        from vitlab.errors import ConfigError
        raise ConfigError("--visualize draws into a folder: give --output DIR as well")


def evaluate(args) -> int:
    from vitlab.checkpoints.atomic import atomic_write_json, to_json
    from vitlab.detection.coco_eval import write_results_json
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.run_folder import claim_run_folder
    from vitlab.engine.runtime import resolve_device
    from vitlab.tasks.detection import detection_sets, draw_predictions, evaluate_detection
    require_output_for_drawings(args)
    model = _model(args)
    cfg = eval_config(args, "detection", "det", model)
    device = resolve_device(cfg["run"]["device"], DistInfo())
    _, val = detection_sets(cfg, model.pretrained_cfg["mean"], model.pretrained_cfg["std"], train=False)
    if getattr(model, "num_classes", val.num_classes) != val.num_classes:
        raise ValueError(f"the model detects {model.num_classes} categories, the data has {val.num_classes}")
    res = evaluate_detection(model.to(device), val, device, DistInfo(), cfg["data"]["eval_batch_size"], 0,
                             cfg["det"]["eval_limit"])
    tables, results = res.pop("_tables"), res.pop("_results")
    if args.output:
        with claim_run_folder(args.output, overwrite=args.overwrite, resumable=False) as folder:
            atomic_write_json(folder.path / "eval.json", res)
            for kind, items in results.items():
                if items:
                    write_results_json(folder.path / f"results_{kind}.json", items)
            if args.visualize:
                draw_predictions(model, val, device, folder.path / "predictions", args.visualize, 0.3,
                                 getattr(model, "model_name", args.model))
    print(to_json(res, indent=2) if args.json else "\n\n".join(f"{k}:\n{v}" for k, v in tables.items()))
    return 0


def _image_files(paths) -> list:
    from pathlib import Path

    from vitlab.data.folder import IMAGE_EXTENSIONS
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p} does not exist")
    if not files:
        raise FileNotFoundError(f"no images found in {', '.join(map(str, paths))}")
    return files


def predict(args) -> int:
    """Detections drawn on every image (PNG into ``--output``), and printed (or ``--json``)."""
    import torch

    from vitlab.checkpoints.atomic import to_json
    from vitlab.data.det_transforms import build_detection_transform, collate_detection
    from vitlab.data.folder import load_image
    from vitlab.detection.visualize import draw_detections
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.run_folder import claim_run_folder
    from vitlab.engine.runtime import resolve_device
    model = _model(args)
    device = resolve_device(args.device or "auto", DistInfo())
    model.to(device).eval()
    names = getattr(model, "label_names", None) or [str(i) for i in range(getattr(model, "num_classes", 0))]
    pre = model.pretrained_cfg
    t = build_detection_transform(False, args.img_size or 800, 1333, 0.0, [255 * m for m in pre["mean"]],
                                  [255 * s for s in pre["std"]])
    out = claim_run_folder(args.output or "predictions", overwrite=args.overwrite, resumable=False)
    rows = []
    with out, torch.no_grad():
        for i, f in enumerate(_image_files(args.images)):
            arr = load_image(str(f), "RGB")
            img = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()
            h0, w0 = arr.shape[:2]
            meta = {"image_id": i, "file_name": f.name, "orig_size": (h0, w0), "img_size": (h0, w0),
                    "scale_factor": (1.0, 1.0), "flip": False}
            empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "masks": None,
                     "keypoints": None, "crowd": torch.zeros(0, dtype=torch.bool), "meta": meta}
            (images, metas), _, _ = collate_detection([t(img, empty)])
            pred = model.predict(images.to(device), metas)[0]
            draw_detections(out.path / f"{f.stem}.png", arr, pred, class_names=names, score_thr=args.score_thr,
                            title=f"{getattr(model, 'model_name', args.model)}: {f.name} "
                                  f"(detections with score >= {args.score_thr:.2f})")
            keep = pred["scores"] >= args.score_thr
            rows.append({"image": str(f), "detections": [
                {"label": names[int(c)] if int(c) < len(names) else int(c), "score": round(float(s), 4),
                 "box": [round(float(v), 1) for v in b]}
                for b, s, c in zip(pred["boxes"][keep], pred["scores"][keep], pred["labels"][keep])]})
    if args.json:
        print(to_json(rows, indent=1))
    else:
        for r in rows:
            found = ", ".join(f"{d['label']} {d['score']:.2f}" for d in r["detections"]) or "nothing"
            print(f"{r['image']}: {found}")
        print(f"drawn into {out.path}/")
    return 0

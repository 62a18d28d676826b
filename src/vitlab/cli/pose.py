"""``vitlab pose train|eval|predict``: top-down COCO pose estimation.

``pose train`` is ``vitlab train --task pose`` with the pose flags; ``pose eval MODEL`` scores OKS keypoint
AP by pycocotools on the validation boxes (ground truth, or ``--bbox-file`` detections); ``pose predict
MODEL IMAGES...`` draws the skeletons, one person per image or per box of ``--boxes`` (the JSON that
``vitlab detect predict --json`` prints).
"""
from __future__ import annotations

from .common import add_flags, run_config, set_threads, train_and_report
from .detect import _image_files, _model, eval_config, require_output_for_drawings
from .train import RUN_FLAGS, RUN_SWITCHES, add_run_flags

COMMAND = "pose"
HELP = "top-down pose estimation: train, evaluate (OKS AP), predict (drawn skeletons)"

FLAGS = {
    **RUN_FLAGS, "data_root": "pose.data_root", "visualize": "pose.visualize", "warmup_steps": "sched.warmup_steps",
    "bbox_file": "pose.bbox_file",
}
SWITCHES = {**RUN_SWITCHES, "no_flip_test": ("pose.flip_test", False)}
KPT_THR = 0.3      # joints drawn by `pose predict`


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    t = sub.add_parser("train", help="train a top-down pose model; writes config.yaml, metrics.jsonl, model/")
    add_run_flags(t)
    t.add_argument("--data-root", help="where the built-in synthetic set is written")
    t.add_argument("--visualize", type=int, help="validation images drawn with their skeletons at the end")
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--bbox-file", help="COCO detection results to evaluate on (default: ground-truth boxes)")
    t.add_argument("--no-flip-test", action="store_true", default=None)
    e = sub.add_parser("eval", help="OKS keypoint AP (pycocotools) on the validation people")
    _model_args(e)
    e.add_argument("--limit", type=int, help="evaluate the first N people only")
    e.add_argument("--bbox-file", help="COCO detection results to evaluate on (default: ground-truth boxes)")
    e.add_argument("--visualize", type=int, default=0, help="draw this many images into --output")
    p = sub.add_parser("predict", help="draw the predicted skeletons on images")
    _model_args(p)
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("--boxes", help="person boxes: the JSON of `vitlab detect predict --json` (default: whole images)")


def _model_args(p) -> None:
    p.add_argument("model", help="a pose-train run folder, a model folder, or a name (with --checkpoint)")
    add_flags(p, "checkpoint", "output", "overwrite", "device", "threads", "json", "batch_size", "data")
    p.add_argument("--data-root", help="where the built-in synthetic set is written")


def run(args) -> int:
    set_threads(getattr(args, "threads", None))
    if args.action == "train":
        return train_and_report(run_config(args, task="pose", flags=FLAGS, switches=SWITCHES), args)
    return evaluate(args) if args.action == "eval" else predict(args)


def evaluate(args) -> int:
    from vitlab.checkpoints.atomic import atomic_write_json, to_json
    from vitlab.detection.coco_eval import write_results_json
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.run_folder import claim_run_folder
    from vitlab.engine.runtime import resolve_device
    from vitlab.pose.evaluation import evaluate_keypoints, rescore_and_nms
    from vitlab.tasks.pose import draw_skeletons, pose_sets, predict_keypoints
    require_output_for_drawings(args)
    model = _model(args)
    cfg = eval_config(args, "pose", "pose", model)
    if args.bbox_file:
        cfg["pose"]["bbox_file"] = args.bbox_file
    device = resolve_device(cfg["run"]["device"], DistInfo())
    _, val = pose_sets(cfg, train=False)
    entries = predict_keypoints(model.to(device), val, device, DistInfo(), cfg["data"]["eval_batch_size"], 0,
                                cfg["pose"]["flip_test"], cfg["pose"]["eval_limit"])
    results = rescore_and_nms(entries)
    img_ids = sorted({e["image_id"] for e in entries}) if cfg["pose"]["eval_limit"] else None
    stats = evaluate_keypoints(val.coco, results, img_ids=img_ids)
    res = {**dict(stats), "people": len(entries)}
    if args.output:
        with claim_run_folder(args.output, overwrite=args.overwrite, resumable=False) as folder:
            atomic_write_json(folder.path / "eval.json", res)
            write_results_json(folder.path / "results_keypoints.json", results)
            if args.visualize:
                draw_skeletons(val, results, folder.path / "predictions", args.visualize,
                               getattr(model, "model_name", args.model))
    print(to_json(res, indent=2) if args.json else f"keypoints:\n{stats.summary}")
    return 0


def _boxes(path) -> dict:
    """image path -> person boxes [x1, y1, x2, y2, score] from ``detect predict --json`` output."""
    import json
    from pathlib import Path

    from vitlab.errors import DataError
    if not path:
        return {}
    try:
        rows = json.loads(Path(path).read_text())
        return {str(Path(r["image"]).resolve()): [d["box"] + [d["score"]] for d in r["detections"]
                                                  if d["label"] in ("person", 0)] for r in rows}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"--boxes {path}: expected the JSON that `vitlab detect predict --json` prints "
                        f"([{{'image', 'detections': [{{'label', 'score', 'box'}}]}}]); {type(e).__name__}: {e}") from e


def predict(args) -> int:
    import sys
    from pathlib import Path

    import numpy as np
    import torch

    from vitlab.checkpoints.atomic import to_json
    from vitlab.data.folder import load_image
    from vitlab.detection.visualize import draw_detections
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.run_folder import claim_run_folder
    from vitlab.engine.runtime import resolve_device
    from vitlab.pose.data import crop_person
    model = _model(args)
    boxes = _boxes(args.boxes)
    device = resolve_device(args.device or "auto", DistInfo())
    model.to(device).eval()
    files = _image_files(args.images)
    out = claim_run_folder(args.output or "pose-predictions", overwrite=args.overwrite, resumable=False)
    rows = []
    with out, torch.no_grad():
        for f in files:
            arr = load_image(str(f), "RGB")
            h, w = arr.shape[:2]
            people = boxes.get(str(Path(f).resolve())) if args.boxes else [[0.0, 0.0, float(w), float(h), 1.0]]
            if not people:
                why = "no person box" if str(Path(f).resolve()) in boxes else "not listed"
                print(f"{f}: skipped ({why} in --boxes {args.boxes})", file=sys.stderr)
                rows.append({"image": str(f), "people": [], "skipped": why})
                continue
            crops = [crop_person(arr, b[:4], model.input_size, score=b[4]) for b in people]
            images = torch.stack([c[0] for c in crops]).to(device)
            keypoints, _ = model.predict(images, [c[1] for c in crops])
            shown = int((keypoints[..., 2] > KPT_THR).sum())
            drawing = {"keypoints": keypoints.numpy(), "boxes": np.array([b[:4] for b in people], np.float32),
                       "scores": np.array([b[4] for b in people], np.float32)}
            draw_detections(out.path / f"{f.stem}.png", arr, drawing, class_names=["person"], score_thr=0.0,
                            kpt_thr=KPT_THR, title=f"{getattr(model, 'model_name', args.model)}: {f.name} "
                                                   f"({shown} joints with score > {KPT_THR})")
            rows.append({"image": str(f), "people": [np.round(k.numpy(), 2).tolist() for k in keypoints]})
    if args.json:
        print(to_json(rows, indent=1))
    else:
        for r in rows:
            if "skipped" not in r:
                print(f"{r['image']}: {len(r['people'])} person(s)")
        print(f"drawn into {out.path}/")
    return 0

"""COCO evaluation with pycocotools, as mmdetection 2.x's ``CocoDataset.evaluate`` does it.

* :func:`coco_results_bbox` / :func:`coco_results_segm`: detector predictions (boxes xyxy in
  original image pixels, contiguous labels) -> COCO result dicts (``bbox`` as x, y, w, h with
  ``w = x2 - x1``, mmdet's ``xyxy2xywh``; masks as compressed RLE with ``counts`` a str; the mask
  score is the box score).
* :func:`evaluate_coco`: ``COCOeval`` for ``iou_type`` ``"bbox"``, ``"segm"`` or ``"keypoints"``;
  returns a :class:`CocoStats` dict of the summary numbers in percent (``-1``, "no ground truth in
  this area range", becomes NaN) whose ``.summary`` is COCOeval's printed table. For ``"segm"``
  the results' ``bbox`` entries are dropped before loading, as mmdet does, so instance areas (for
  APs/APm/APl) are mask areas; ``"keypoints"`` evaluates the categories that declare keypoints
  (all when none does). By default every image of the ground truth is evaluated; pass
  ``img_ids`` to evaluate a subset.
* :func:`write_results_json`: the result list as JSON, written atomically.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import os
from pathlib import Path

import numpy as np
import torch

STAT_NAMES = {
    "bbox": ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"),
    "keypoints": ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"),
}
STAT_NAMES["segm"] = STAT_NAMES["bbox"]


class CocoStats(dict):
    """Summary numbers (percent) by name; ``summary`` holds COCOeval's text table."""

    summary: str = ""


def _array(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def load_coco(coco_gt):
    """A pycocotools ``COCO`` from an object (returned as is), a json path, or a dataset dict."""
    from pycocotools.coco import COCO
    if isinstance(coco_gt, COCO):
        return coco_gt
    with contextlib.redirect_stdout(io.StringIO()):
        if isinstance(coco_gt, dict):
            coco = COCO()
            coco.dataset = copy.deepcopy(coco_gt)
            coco.createIndex()
            return coco
        if not Path(coco_gt).is_file():
            raise FileNotFoundError(f"COCO annotation file {coco_gt} does not exist")
        return COCO(str(coco_gt))


def xyxy_to_xywh(boxes) -> np.ndarray:
    """(n, 4) x1, y1, x2, y2 -> x, y, w, h (mmdet: ``w = x2 - x1``)."""
    b = _array(boxes).astype(np.float64).reshape(-1, 4)
    return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1)


def _category(cat_ids, label: int) -> int:
    if not 0 <= label < len(cat_ids):
        raise ValueError(f"label {label} is outside the {len(cat_ids)} categories")
    return int(cat_ids[label])


def coco_results_bbox(predictions, metas, cat_ids) -> list[dict]:
    """``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}]`` for every predicted box."""
    if len(predictions) != len(metas):
        raise ValueError(f"{len(predictions)} predictions but {len(metas)} metas")
    out = []
    for pred, meta in zip(predictions, metas):
        boxes, scores, labels = xyxy_to_xywh(pred["boxes"]), _array(pred["scores"]), _array(pred["labels"])
        for box, score, label in zip(boxes, scores, labels):
            out.append({"image_id": int(meta["image_id"]), "category_id": _category(cat_ids, int(label)),
                        "bbox": [float(v) for v in box], "score": float(score)})
    return out


def encode_mask(mask) -> dict:
    """(h, w) bool/uint8 mask -> compressed RLE ``{"size": [h, w], "counts": str}``."""
    from pycocotools import mask as mask_utils
    m = np.asfortranarray(_array(mask).astype(np.uint8)[:, :, None])
    rle = mask_utils.encode(m)[0]
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def coco_results_segm(predictions, metas, cat_ids) -> list[dict]:
    """``[{"image_id", "category_id", "segmentation": RLE, "score", "bbox"}]``: masks at the original size."""
    if len(predictions) != len(metas):
        raise ValueError(f"{len(predictions)} predictions but {len(metas)} metas")
    out = []
    for pred, meta in zip(predictions, metas):
        masks = pred.get("masks")
        if masks is None:
            raise ValueError("segm results need predictions with 'masks' (n, h0, w0)")
        boxes, scores, labels = xyxy_to_xywh(pred["boxes"]), _array(pred["scores"]), _array(pred["labels"])
        masks = _array(masks)
        if len(masks) != len(scores):
            raise ValueError(f"{len(masks)} masks but {len(scores)} scores in one prediction")
        for box, mask, score, label in zip(boxes, masks, scores, labels):
            out.append({"image_id": int(meta["image_id"]), "category_id": _category(cat_ids, int(label)),
                        "segmentation": encode_mask(mask), "score": float(score),
                        "bbox": [float(v) for v in box]})
    return out


def _percent(stats, names) -> CocoStats:
    out = CocoStats()
    for name, v in zip(names, stats):
        v = float(v)
        out[name] = math.nan if v < 0 else 100.0 * v
    return out


def run_cocoeval(coco_gt, results, iou_type: str, img_ids=None, sigmas=None) -> CocoStats:
    """Evaluate, accumulate and summarise; stats in percent with the COCOeval text as ``.summary``."""
    from pycocotools.cocoeval import COCOeval
    if iou_type not in STAT_NAMES:
        raise ValueError(f"iou_type must be one of {sorted(STAT_NAMES)}, got {iou_type!r}")
    names = STAT_NAMES[iou_type]
    gt = load_coco(coco_gt)
    if isinstance(results, (str, os.PathLike)):
        import json
        results = json.loads(Path(results).read_text())
    results = copy.deepcopy(list(results))
    if iou_type == "segm":
        for r in results:
            r.pop("bbox", None)
    if not results:
        stats = CocoStats({n: 0.0 for n in names})
        stats.summary = f"no {iou_type} results: every number is 0"
        return stats
    known = set(gt.getImgIds())
    stray = {r["image_id"] for r in results} - known
    if stray:
        raise ValueError(f"{len(stray)} result image ids are not in the ground truth (e.g. {sorted(stray)[:3]})")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType=iou_type)
        if iou_type == "keypoints":  # only categories that declare keypoints (COCO: person)
            kpt_cats = [c["id"] for c in gt.loadCats(gt.getCatIds()) if c.get("keypoints")]
            if kpt_cats:
                ev.params.catIds = sorted(kpt_cats)
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        if img_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = _percent(ev.stats, names)
    text = buf.getvalue()
    stats.summary = text[text.find(" Average Precision"):].rstrip() if " Average Precision" in text else text.rstrip()
    return stats


def evaluate_coco(coco_gt, results, iou_type: str = "bbox", img_ids=None) -> CocoStats:
    """COCO AP/AR in percent for ``results`` (a list of result dicts or a json path) against ``coco_gt``."""
    return run_cocoeval(coco_gt, results, iou_type, img_ids=img_ids)


def write_results_json(path: str | os.PathLike, results: list[dict]) -> Path:
    """Write COCO results atomically (``vitlab.checkpoints.atomic.atomic_write_json``)."""
    from vitlab.checkpoints.atomic import atomic_write_json
    atomic_write_json(path, list(results))
    return Path(path)

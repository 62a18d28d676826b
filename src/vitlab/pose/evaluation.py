"""COCO keypoint evaluation (OKS AP by pycocotools), with mmpose 0.x's ``TopDownCocoDataset.evaluate`` steps.

1. :func:`keypoint_results`: one entry per crop: its image, keypoints (x, y, score) in image
   pixels, the box score and the crop area ``prod(scale * 200)``.
2. :func:`rescore_and_nms` (``vis_thr=0.2``, ``oks_thr=0.9`` as the UniFormer configs): each score
   becomes ``box score x mean of the keypoint scores above vis_thr`` (0 when none is), then greedy
   OKS-NMS per image (:func:`oks_nms`, mmpose's ``oks_nms`` with ``sigmas`` and the crop areas, no
   visibility threshold) drops an instance whose OKS with a higher-scoring kept one exceeds
   ``oks_thr``. mmpose's de-duplication of repeated box ids (``_sort_and_unique_bboxes``) is not
   needed here: every crop is predicted once.
3. :func:`evaluate_keypoints`: ``COCOeval(iouType="keypoints")`` with COCO's 17 sigmas ->
   ``{AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl}`` in percent (``.summary``: the text table).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import torch

# COCO's per-keypoint OKS constants (cocoapi / mmpose): nose, eyes, ears, shoulders, elbows, wrists, hips, knees, ankles
COCO_SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10.0


def keypoint_results(keypoints, metas, box_scores=None, category_id: int = 1) -> list[dict]:
    """Per-crop result entries from ``TopDownPose.predict`` output (keypoints (N, K, 3)) and the crops' metas."""
    kps = keypoints.detach().cpu().double().numpy() if isinstance(keypoints, torch.Tensor) else np.asarray(keypoints)
    if len(kps) != len(metas):
        raise ValueError(f"{len(kps)} keypoint sets but {len(metas)} metas")
    out = []
    for i, (kp, meta) in enumerate(zip(kps, metas)):
        scale = np.asarray(meta["scale"], dtype=np.float64)
        score = float(box_scores[i]) if box_scores is not None else float(meta.get("bbox_score", 1.0))
        out.append({"image_id": int(meta["image_id"]), "category_id": int(category_id),
                    "keypoints": kp.reshape(-1, 3).astype(np.float64), "box_score": score,
                    "area": float(np.prod(scale * 200.0)),
                    "center": [float(v) for v in meta["center"]], "scale": [float(v) for v in scale]})
    return out


def oks_iou(g: np.ndarray, d: np.ndarray, area_g: float, area_d: np.ndarray, sigmas=COCO_SIGMAS,
            vis_thr: float | None = None) -> np.ndarray:
    """OKS of keypoints ``g`` (K, 3) with each of ``d`` (M, K, 3), mmpose's ``oks_iou``."""
    var = (np.asarray(sigmas) * 2) ** 2
    dx, dy = d[..., 0] - g[None, :, 0], d[..., 1] - g[None, :, 1]
    e = (dx ** 2 + dy ** 2) / var / ((area_g + np.asarray(area_d)[:, None]) / 2 + np.spacing(1)) / 2
    if vis_thr is not None:
        keep = (g[None, :, 2] > vis_thr) & (d[..., 2] > vis_thr)
        n = keep.sum(-1)
        return np.where(n > 0, (np.exp(-e) * keep).sum(-1) / np.maximum(n, 1), 0.0)
    return np.exp(-e).mean(-1)


def oks_nms(entries: list[dict], thr: float = 0.9, sigmas=COCO_SIGMAS, vis_thr: float | None = None) -> list[int]:
    """Greedy OKS-NMS over the entries of one image: indices kept, by decreasing ``score``."""
    if not entries:
        return []
    scores = np.array([e["score"] for e in entries])
    kpts = np.stack([e["keypoints"] for e in entries])
    areas = np.array([e["area"] for e in entries])
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(int(i))
        if len(rest) == 0:
            break
        ovr = oks_iou(kpts[i], kpts[rest], areas[i], areas[rest], sigmas, vis_thr)
        order = rest[ovr <= thr]
    return keep


def rescore_and_nms(entries: list[dict], vis_thr: float = 0.2, oks_thr: float = 0.9, use_nms: bool = True,
                    sigmas=COCO_SIGMAS) -> list[dict]:
    """mmpose's rescoring (box score x mean keypoint score above ``vis_thr``) and per-image OKS-NMS -> COCO results."""
    by_image = defaultdict(list)
    for e in entries:
        kp = e["keypoints"]
        good = kp[:, 2] > vis_thr
        kpt_score = float(kp[good, 2].mean()) if good.any() else 0.0
        by_image[e["image_id"]].append({**e, "score": kpt_score * e["box_score"]})
    out = []
    for image_id in sorted(by_image):
        group = by_image[image_id]
        keep = oks_nms(group, oks_thr, sigmas) if use_nms else range(len(group))
        for i in keep:
            e = group[i]
            out.append({"image_id": int(image_id), "category_id": e["category_id"],
                        "keypoints": [float(v) for v in e["keypoints"].reshape(-1)], "score": float(e["score"]),
                        "center": e["center"], "scale": e["scale"]})
    return out


def evaluate_keypoints(coco_gt, results, sigmas=COCO_SIGMAS, img_ids=None):
    """OKS keypoint AP/AR in percent (a :class:`vitlab.detection.coco_eval.CocoStats` with ``.summary``).

    ``results`` are COCO keypoint results (``rescore_and_nms`` output, or a json path); ``coco_gt``
    a pycocotools ``COCO``, an annotation json path or a dataset dict.
    """
    from vitlab.detection.coco_eval import run_cocoeval
    return run_cocoeval(coco_gt, results, "keypoints", img_ids=img_ids, sigmas=sigmas)

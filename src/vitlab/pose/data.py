"""Top-down COCO keypoint crops (mmpose 0.x's ``TopDownCocoDataset`` + its train/val pipelines).

``TopDownCocoKeypoints(coco_json, img_dir, train=True)`` is a seeded dataset over person instances
(``iscrowd=0``, a valid box after mmpose's box sanitising, ``num_keypoints > 0``). For validation
(``train=False``) it runs over the same ground-truth boxes, or, with ``bbox_file``, over the person
boxes of a COCO detection result json (``category_id`` = the keypoint category, score >=
``det_bbox_thr``; these crops have zero targets and weights).

One sample, in mmpose's order:

1. the box -> center / scale (aspect ratio ``input_size[0] / input_size[1]``, padding 1.25, units of
   200 px); in training, with probability ``center_shift_prob`` (0.3) the center moves by up to
   +-20% of the box size (mmpose's ``_xywh2cs``; mmpose draws this once when it builds the dataset,
   here it is drawn per sample);
2. training only: horizontal flip (prob 0.5, left/right joints swapped, ``x -> width - 1 - x``);
   half-body (prob 0.3, if more than 8 joints are visible: the upper or lower body's visible joints,
   mmpose's ``randn() < 0.5`` choice kept, box x1.5); scale ``clip(1 + 0.5 randn, 0.5, 1.5)``; rotation
   ``clip(40 randn, -80, 80)`` degrees with probability 0.6;
3. the affine crop to ``input_size`` (width, height): pure torch, ``F.grid_sample`` (bilinear, zeros
   outside) at the image positions of the output pixel centres, i.e. OpenCV ``warpAffine``'s
   sampling of mmpose's ``get_affine_transform`` matrix; joints go through the same matrix;
4. ToTensor + Normalize (ImageNet mean / std) and MSRA Gaussian targets (``sigma`` 2) at
   ``heatmap_size`` with weights 1 for visible joints inside the heatmap, 0 otherwise.

All randomness comes from the sample's generator (``dataset[(idx, seed)]``); ``dataset[idx]`` with a
training dataset draws from torch's global generator.

An item is ``(image, (target, weight), meta)``:

* ``image``: float32 (3, H, W) normalised crop (H, W = ``input_size[1], input_size[0]``, 256 x 192);
* ``target``: float32 (K, h, w) heatmaps (64 x 48); ``weight``: float32 (K, 1);
* ``meta``: a dict of plain Python values: ``image_id`` (int, COCO id), ``ann_id`` (int, -1 for a
  detected box), ``file_name`` (str), ``orig_size`` ((h0, w0)), ``bbox`` ([x, y, w, h] floats),
  ``bbox_score`` (float, 1 for ground truth), ``center`` ([x, y]) and ``scale`` ([w, h], units of 200
  px) of the crop actually taken, ``rotation`` (degrees), ``flip`` (bool), ``index`` (int).

An unreadable image gives a :class:`vitlab.data.folder.Skipped` sample. :func:`collate_topdown`
batches samples for the engine: ``((images (B, 3, H, W), metas list), (targets (B, K, h, w),
weights (B, K, 1)), skipped names)``; images, targets and weights are stacked with
``torch.utils.data.default_collate``.
"""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from vitlab.data.datasets import SeededDataset
from vitlab.data.folder import Skipped, split_skipped
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD
from vitlab.pose.targets import (COCO_FLIP_PAIRS, COCO_UPPER_BODY_IDS, PIXEL_STD, affine_matrix, apply_affine,
                                 box_to_center_scale, fliplr_joints, gaussian_targets)


def warp_affine(image: torch.Tensor, matrix, output_size) -> torch.Tensor:
    """(C, H, W) float image through a (2, 3) image -> output affine matrix, sampled at output pixel centres."""
    C, H, W = image.shape
    w, h = int(output_size[0]), int(output_size[1])
    full = np.vstack([np.asarray(matrix, dtype=np.float64), [0.0, 0.0, 1.0]])
    inv = torch.from_numpy(np.linalg.inv(full)[:2])
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1) @ inv.T  # (h, w, 2) image positions
    grid = torch.stack([(2 * pts[..., 0] + 1) / W - 1, (2 * pts[..., 1] + 1) / H - 1], dim=-1)
    out = F.grid_sample(image[None].float(), grid[None].float(), mode="bilinear", padding_mode="zeros",
                        align_corners=False)
    return out[0]


def load_coco_json(path):
    """pycocotools ``COCO`` for an annotation file (its progress prints silenced)."""
    from pycocotools.coco import COCO
    if not Path(path).is_file():
        raise FileNotFoundError(f"COCO keypoint annotation file {path} does not exist")
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(path))


def _rand(g) -> float:
    return float(torch.rand((), generator=g))


def _randn(g) -> float:
    return float(torch.randn((), generator=g))


def _clean_box(bbox, width: int, height: int):
    """mmpose's box sanitising: clip to the image (inclusive pixel ends); None when nothing is left."""
    x, y, w, h = (float(v) for v in bbox[:4])
    x1, y1 = max(0.0, x), max(0.0, y)
    x2 = min(width - 1.0, x1 + max(0.0, w - 1.0))
    y2 = min(height - 1.0, y1 + max(0.0, h - 1.0))
    return [x1, y1, x2 - x1, y2 - y1] if x2 > x1 and y2 > y1 else None


def half_body_center_scale(joints, visible, upper_ids, aspect_ratio: float, generator):
    """mmpose's half-body box: center / scale around the visible upper or lower body joints (None if too few)."""
    upper = [j for j in range(len(joints)) if visible[j] > 0 and j in upper_ids]
    lower = [j for j in range(len(joints)) if visible[j] > 0 and j not in upper_ids]
    if _randn(generator) < 0.5 and len(upper) > 2:  # mmpose draws randn here (upper ~69% of the time)
        chosen = upper
    elif len(lower) > 2:
        chosen = lower
    else:
        chosen = upper
    if len(chosen) < 2:
        return None
    pts = np.asarray(joints, dtype=np.float64)[chosen, :2]
    center = pts.mean(0)
    w, h = pts.max(0) - pts.min(0)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    elif w < aspect_ratio * h:
        w = h * aspect_ratio
    return center, np.array([w, h]) / PIXEL_STD * 1.5


class TopDownCocoKeypoints(SeededDataset):
    """Person crops with Gaussian heatmap targets from a COCO keypoint json (see the module docstring)."""

    def __init__(self, coco_json, img_dir, input_size=(192, 256), heatmap_size=(48, 64), train: bool = True,
                 sigma: float = 2.0, mean=IMAGENET_MEAN, std=IMAGENET_STD, bbox_file=None, det_bbox_thr: float = 0.0,
                 flip_prob: float = 0.5, half_body_prob: float = 0.3, num_joints_half_body: int = 8,
                 scale_factor: float = 0.5, rot_factor: float = 40.0, rot_prob: float = 0.6,
                 center_shift_prob: float = 0.3, padding: float = 1.25, flip_pairs=COCO_FLIP_PAIRS,
                 upper_body_ids=COCO_UPPER_BODY_IDS):
        self.coco_json, self.img_dir = Path(coco_json), Path(img_dir)
        self.coco = load_coco_json(self.coco_json)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.heatmap_size = (int(heatmap_size[0]), int(heatmap_size[1]))
        self.aspect_ratio = self.input_size[0] / self.input_size[1]
        self.train, self.sigma, self.padding = train, float(sigma), float(padding)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.flip_prob, self.half_body_prob, self.num_joints_half_body = flip_prob, half_body_prob, num_joints_half_body
        self.scale_factor, self.rot_factor, self.rot_prob = scale_factor, rot_factor, rot_prob
        self.center_shift_prob = center_shift_prob
        self.flip_pairs, self.upper_body_ids = tuple(flip_pairs), set(upper_body_ids)
        cats = [c for c in self.coco.loadCats(self.coco.getCatIds()) if c.get("keypoints")] or \
            self.coco.loadCats(self.coco.getCatIds())
        if not cats:
            raise ValueError(f"{coco_json} has no categories; a COCO keypoint json names the person category")
        self.category_id = int(cats[0]["id"])
        self.num_keypoints = len(cats[0].get("keypoints") or ()) or 17
        self.img_ids = sorted(self.coco.getImgIds())
        if train and bbox_file:
            raise ValueError("bbox_file gives detected boxes for evaluation; a training set uses ground-truth boxes")
        self.samples = self._detections(bbox_file, det_bbox_thr) if bbox_file else self._ground_truth()

    # --- indexing --------------------------------------------------------------------------------
    def _ground_truth(self) -> list[dict]:
        out = []
        for img_id in self.img_ids:
            info = self.coco.imgs[img_id]
            for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=img_id, iscrowd=False)):
                if "bbox" not in ann or ann.get("area", 1) <= 0:
                    continue
                box = _clean_box(ann["bbox"], info["width"], info["height"])
                kps = ann.get("keypoints")
                if box is None or not kps or max(kps) == 0 or ann.get("num_keypoints", 1) == 0:
                    continue
                out.append({"image_id": int(img_id), "ann_id": int(ann["id"]), "file_name": info["file_name"],
                            "orig_size": (int(info["height"]), int(info["width"])), "bbox": box, "bbox_score": 1.0,
                            "joints": np.asarray(kps, dtype=np.float64).reshape(-1, 3)})
        return out

    def _detections(self, bbox_file, thr: float) -> list[dict]:
        path = Path(bbox_file)
        if not path.is_file():
            raise FileNotFoundError(f"detection result file {path} does not exist")
        dets = json.loads(path.read_text())
        if not isinstance(dets, list):
            raise ValueError(f"{path} must hold a COCO result list [{{image_id, category_id, bbox, score}}, ...]")
        out = []
        for d in dets:
            if int(d.get("category_id", self.category_id)) != self.category_id or float(d["score"]) < thr:
                continue
            info = self.coco.imgs.get(d["image_id"])
            if info is None:
                raise ValueError(f"{path}: image_id {d['image_id']} is not in {self.coco_json}")
            out.append({"image_id": int(d["image_id"]), "ann_id": -1, "file_name": info["file_name"],
                        "orig_size": (int(info["height"]), int(info["width"])),
                        "bbox": [float(v) for v in d["bbox"][:4]], "bbox_score": float(d["score"]),
                        "joints": np.zeros((self.num_keypoints, 3))})
        return out

    def __len__(self) -> int:
        return len(self.samples)

    # --- one sample ------------------------------------------------------------------------------
    def read_image(self, file_name: str):
        """uint8 (3, H, W) RGB tensor, or a :class:`Skipped` naming the file and the reason."""
        from PIL import Image, UnidentifiedImageError
        path = self.img_dir / file_name
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"))
        except (OSError, UnidentifiedImageError, ValueError) as e:
            return Skipped(str(path), f"unreadable image ({e.__class__.__name__}: {e})")
        return torch.from_numpy(arr.copy()).permute(2, 0, 1)

    def load(self, idx: int, generator):
        s = self.samples[idx]
        img = self.read_image(s["file_name"])
        if isinstance(img, Skipped):
            return img
        width = img.shape[-1]
        joints, visible = s["joints"][:, :2].copy(), np.minimum(1.0, s["joints"][:, 2])
        x, y, w, h = s["bbox"]
        center, scale = box_to_center_scale(s["bbox"], self.aspect_ratio, self.padding)
        rotation, flipped = 0.0, False
        if self.train:
            if _rand(generator) < self.center_shift_prob:
                center = center + 0.4 * (np.array([_rand(generator), _rand(generator)]) - 0.5) * [w, h]
            if _rand(generator) <= self.flip_prob:
                img = img.flip(-1)
                joints, visible = fliplr_joints(joints, visible, width, self.flip_pairs)
                center = np.array([width - center[0] - 1, center[1]])
                flipped = True
            if visible.sum() > self.num_joints_half_body and _rand(generator) < self.half_body_prob:
                half = half_body_center_scale(joints, visible, self.upper_body_ids, self.aspect_ratio, generator)
                if half is not None:
                    center, scale = half
            sf, rf = self.scale_factor, self.rot_factor
            scale = scale * float(np.clip(_randn(generator) * sf + 1, 1 - sf, 1 + sf))
            r = float(np.clip(_randn(generator) * rf, -2 * rf, 2 * rf))
            rotation = r if _rand(generator) <= self.rot_prob else 0.0
        matrix = affine_matrix(center, scale, rotation, self.input_size)
        crop = warp_affine(img.float(), matrix, self.input_size) / 255.0
        crop = (crop - self.mean) / self.std
        crop_joints = np.where(visible[:, None] > 0, apply_affine(joints, matrix), joints)
        target, weight = gaussian_targets(crop_joints, visible, self.input_size, self.heatmap_size, self.sigma)
        meta = {"image_id": s["image_id"], "ann_id": s["ann_id"], "file_name": s["file_name"],
                "orig_size": s["orig_size"], "bbox": list(s["bbox"]), "bbox_score": s["bbox_score"],
                "center": [float(center[0]), float(center[1])], "scale": [float(scale[0]), float(scale[1])],
                "rotation": float(rotation), "flip": flipped, "index": int(idx)}
        return crop, (target, weight), meta

    def denormalize(self, image: torch.Tensor) -> np.ndarray:
        """A normalised crop (3, H, W) -> uint8 (H, W, 3) for drawing."""
        img = image.detach().cpu().float() * self.std + self.mean
        return (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def crop_person(image, box_xyxy, input_size=(192, 256), score: float = 1.0, mean=IMAGENET_MEAN,
                std=IMAGENET_STD, padding: float = 1.25):
    """The evaluation crop of one person box (x1, y1, x2, y2) of an (H, W, 3) uint8 image: (normalised (3, h, w)
    crop, meta with ``center`` / ``scale`` / ``bbox_score``) for :meth:`TopDownPose.predict`."""
    img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
    x1, y1, x2, y2 = (float(v) for v in box_xyxy[:4])
    w, h = int(input_size[0]), int(input_size[1])
    center, scale = box_to_center_scale([x1, y1, x2 - x1, y2 - y1], w / h, padding)
    crop = warp_affine(img, affine_matrix(center, scale, 0.0, (w, h)), (w, h)) / 255.0
    crop = (crop - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    meta = {"center": [float(v) for v in center], "scale": [float(v) for v in scale], "bbox_score": float(score),
            "bbox": [x1, y1, x2 - x1, y2 - y1], "orig_size": tuple(image.shape[:2])}
    return crop.float(), meta


def collate_topdown(batch):
    """Samples -> ``((images, metas), (targets, weights), skipped)``; ``(None, None, skipped)`` if none is left."""
    kept, skipped = split_skipped(batch)
    if not kept:
        return None, None, skipped
    images, targets = default_collate([(b[0], b[1]) for b in kept])
    return (images, [b[2] for b in kept]), tuple(targets), skipped


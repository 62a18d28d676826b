"""COCO-format detection / instance-segmentation / keypoint datasets, read with pycocotools.

``CocoDetection(root, ann_file, img_dir)`` reads ``root/ann_file`` (COCO json) and loads images
from ``root/img_dir`` lazily (an image is read only when its item is loaded). One item is
``(image, target)``; without a transform ``image`` is float ``(3, H, W)`` in 0-255 at the original
size, with a transform (see :mod:`vitlab.data.det_transforms`) whatever it returns (normally the
normalised, resized image). ``target``:

* ``boxes`` float (N, 4) xyxy in the image's pixels (COCO ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``),
* ``labels`` int64 (N,) contiguous in ``[0, K)`` over the sorted category ids
  (``class_names`` / ``cat_ids`` map back),
* ``masks`` uint8 (N, H, W) from polygons, uncompressed or compressed RLE (``annToMask``), or None,
* ``keypoints`` float (N, K, 3) ``(x, y, v)`` for categories that define keypoints (zeros for the
  others), or None,
* ``crowd`` bool (N,): crowd regions are returned (flagged) so that they can be ignored,
* ``meta``: ``image_id``, ``file_name``, ``orig_size`` (h0, w0), ``img_size`` (h, w), ``scale_factor``
  (w / w0, h / h0), ``flip``.

Annotations are kept as mmdet's ``CocoDataset._parse_ann_info`` keeps them: ``ignore`` ones,
boxes with ``w < 1`` or ``h < 1``, a non-positive ``area``, or no overlap with the image, and unknown
categories are dropped; polygons with fewer than 3 points are dropped (mmdet's
``LoadAnnotations``). With ``filter_empty`` (training) images without any such valid non-crowd
annotation are left out. An image that cannot be read (or whose size differs from the json) comes
back as :class:`~vitlab.data.folder.Skipped`, which :func:`~vitlab.data.det_transforms.collate_detection`
drops and names.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from vitlab.errors import DataError

from .datasets import SeededDataset
from .folder import UNREADABLE_ERRORS, Skipped, load_image


def load_coco(ann_file: str | os.PathLike):
    """A pycocotools ``COCO`` object for ``ann_file`` (its progress prints silenced); DataError naming the file."""
    try:
        from pycocotools.coco import COCO
    except ImportError as e:
        raise ImportError("COCO datasets are read with pycocotools: pip install pycocotools") from e
    ann_file = Path(ann_file)
    if not ann_file.is_file():
        raise DataError(f"COCO annotation file {ann_file} does not exist")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann_file))
    except (ValueError, AssertionError, KeyError, TypeError) as e:  # bad json / not a COCO dict
        raise DataError(f"{ann_file} is not a readable COCO annotation file ({type(e).__name__}: {e}); expected "
                        f"a json object with 'images', 'annotations' and 'categories'") from e
    return coco


class CocoDetection(SeededDataset):
    """COCO json + image folder as a seeded dataset; see the module docstring for the items."""

    def __init__(self, root: str | os.PathLike, ann_file: str | os.PathLike, img_dir: str | os.PathLike,
                 transform: Callable | None = None, with_masks: bool = True, with_keypoints: bool = False,
                 filter_empty: bool = True):
        self.root = Path(root)
        self.ann_file = self.root / ann_file
        self.img_dir = self.root / img_dir
        if not self.ann_file.is_file():
            raise DataError(f"COCO annotation file {self.ann_file} does not exist")
        if not self.img_dir.is_dir():
            raise DataError(f"COCO image folder {self.img_dir} does not exist (annotations: {self.ann_file})")
        self.coco = load_coco(self.ann_file)
        self.transform, self.with_masks, self.with_keypoints = transform, with_masks, with_keypoints
        self.cat_ids = sorted(self.coco.getCatIds())
        if not self.cat_ids:
            raise DataError(f"{self.ann_file} defines no categories")
        self.cat2label = {c: i for i, c in enumerate(self.cat_ids)}
        self.class_names = [self.coco.cats[c]["name"] for c in self.cat_ids]
        self.num_classes = len(self.cat_ids)
        kp_cats = [c for c in self.cat_ids if self.coco.cats[c].get("keypoints")]
        self.keypoint_cat_ids = kp_cats
        first = self.coco.cats[kp_cats[0]] if kp_cats else {}
        self.keypoint_names = list(first.get("keypoints", []))
        self.skeleton = [list(s) for s in first.get("skeleton", [])]
        self.num_keypoints = len(self.keypoint_names)
        if with_keypoints and not kp_cats:
            raise DataError(f"with_keypoints=True but no category in {self.ann_file} defines 'keypoints'")
        self._anns: dict[int, list[dict]] = {}
        ids = sorted(self.coco.getImgIds())
        for img_id in ids:
            self._anns[img_id] = self._valid_annotations(img_id)
        if filter_empty:
            ids = [i for i in ids if any(not a.get("iscrowd", 0) for a in self._anns[i])]
            if not ids:
                raise DataError(f"no image in {self.ann_file} has a valid non-crowd annotation")
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def _valid_annotations(self, img_id: int) -> list[dict]:
        info = self.coco.imgs[img_id]
        out = []
        for ann in self.coco.imgToAnns.get(img_id, []):
            if ann.get("ignore", False) or ann["category_id"] not in self.cat2label:
                continue
            x, y, w, h = ann["bbox"]
            inter_w = max(0.0, min(x + w, info["width"]) - max(x, 0.0))
            inter_h = max(0.0, min(y + h, info["height"]) - max(y, 0.0))
            if inter_w * inter_h == 0 or ann.get("area", w * h) <= 0 or w < 1 or h < 1:
                continue
            if self.with_masks and "segmentation" not in ann:
                raise DataError(f"annotation {ann.get('id')} (image {img_id}) in {self.ann_file} has no "
                                f"'segmentation'; load this file with with_masks=False")
            out.append(ann)
        return out

    def _mask(self, ann: dict) -> np.ndarray:
        seg = ann["segmentation"]
        if isinstance(seg, list):  # polygons: drop those with fewer than 3 points
            seg = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0]
            if not seg:
                info = self.coco.imgs[ann["image_id"]]
                return np.zeros((info["height"], info["width"]), np.uint8)
            ann = dict(ann, segmentation=seg)
        with warnings.catch_warnings():  # pycocotools' decode warns about numpy 2's copy keyword
            warnings.simplefilter("ignore", DeprecationWarning)
            return self.coco.annToMask(ann)

    def target(self, idx: int) -> dict:
        """The untransformed target of item ``idx`` (masks decoded at the json's image size)."""
        img_id = self.ids[idx]
        info = self.coco.imgs[img_id]
        h, w = int(info["height"]), int(info["width"])
        anns = self._anns[img_id]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        target = {
            "boxes": boxes,
            "labels": torch.tensor([self.cat2label[a["category_id"]] for a in anns], dtype=torch.int64),
            "masks": None, "keypoints": None,
            "crowd": torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool),
            "meta": {"image_id": img_id, "file_name": info["file_name"], "orig_size": (h, w), "img_size": (h, w),
                     "scale_factor": (1.0, 1.0), "flip": False},
        }
        if self.with_masks:
            masks = [self._mask(a) for a in anns]
            target["masks"] = (torch.from_numpy(np.stack(masks)) if masks
                               else torch.zeros((0, h, w), dtype=torch.uint8))
        if self.with_keypoints:
            kps = torch.zeros((len(anns), self.num_keypoints, 3), dtype=torch.float32)
            for i, a in enumerate(anns):
                if a["category_id"] in self.keypoint_cat_ids and a.get("keypoints"):
                    kp = torch.tensor(a["keypoints"], dtype=torch.float32).reshape(-1, 3)
                    if kp.shape[0] != self.num_keypoints:
                        raise DataError(f"annotation {a.get('id')} in {self.ann_file} has {kp.shape[0]} keypoints, "
                                        f"its category defines {self.num_keypoints}")
                    kp[kp[:, 2] <= 0] = 0.0
                    kps[i] = kp
            target["keypoints"] = kps
        return target

    def image_path(self, idx: int) -> Path:
        return self.img_dir / self.coco.imgs[self.ids[idx]]["file_name"]

    def load(self, idx: int, generator: torch.Generator | None):
        path = self.image_path(idx)
        try:
            arr = load_image(str(path), "RGB")
        except UNREADABLE_ERRORS as e:
            return Skipped(str(path), f"{type(e).__name__}: {e}")
        target = self.target(idx)
        h, w = target["meta"]["orig_size"]
        if arr.shape[:2] != (h, w):
            return Skipped(str(path), f"image is {arr.shape[1]}x{arr.shape[0]} but {self.ann_file.name} says {w}x{h}")
        image = torch.from_numpy(arr).permute(2, 0, 1).float()
        if self.transform is not None:
            return self.transform(image, target, generator)
        return image, target

    def __repr__(self) -> str:
        return (f"CocoDetection({self.ann_file}, {len(self)} images, {self.num_classes} classes, "
                f"masks={self.with_masks}, keypoints={self.with_keypoints})")

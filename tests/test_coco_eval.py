"""COCO evaluation: predictions equal to the ground truth score AP 100, shifted ones less (bbox, segm, keypoints)."""
import json
import math

import numpy as np
import pytest
import torch

from vitlab.detection.coco_eval import (coco_results_bbox, coco_results_segm, encode_mask, evaluate_coco,
                                        load_coco, write_results_json, xyxy_to_xywh)
from vitlab.pose.evaluation import COCO_SIGMAS, evaluate_keypoints

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

H, W = 120, 160


def _keypoints(x, y, w, h):
    """17 visible joints spread over the box (x, y, w, h)."""
    rng = np.random.default_rng(int(x * 7 + y))
    pts = np.stack([x + rng.uniform(0.1, 0.9, 17) * w, y + rng.uniform(0.1, 0.9, 17) * h, np.full(17, 2.0)], 1)
    return pts.round(1).reshape(-1).tolist()


def _dataset():
    """Two images; persons (category 1) and cars (category 3) with polygon masks, boxes and (persons) keypoints."""
    boxes = {1: [(10, 10, 40, 60, 1), (70, 20, 50, 80, 1), (100, 5, 30, 20, 3)],
             2: [(20, 30, 60, 50, 3), (5, 5, 30, 90, 1)]}
    images, anns = [], []
    for img_id, objs in boxes.items():
        images.append({"id": img_id, "file_name": f"{img_id}.png", "height": H, "width": W})
        for x, y, w, h, cat in objs:
            poly = [x, y, x + w, y, x + w, y + h, x + w / 2, y + h * 0.8, x, y + h]  # a pentagon inside the box
            ann = {"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": [x, y, w, h],
                   "area": float(w * h), "iscrowd": 0, "segmentation": [poly]}
            if cat == 1:
                ann["keypoints"], ann["num_keypoints"] = _keypoints(x, y, w, h), 17
            anns.append(ann)
    cats = [{"id": 1, "name": "person", "keypoints": [str(i) for i in range(17)], "skeleton": []},
            {"id": 3, "name": "car"}]
    return {"images": images, "annotations": anns, "categories": cats}


CAT_IDS = [1, 3]  # contiguous label -> COCO id


def _predictions(coco, shift=0.0):
    preds, metas = [], []
    for img_id in sorted(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        boxes = torch.tensor([[a["bbox"][0] + shift, a["bbox"][1], a["bbox"][0] + a["bbox"][2] + shift,
                               a["bbox"][1] + a["bbox"][3]] for a in anns], dtype=torch.float32)
        masks = torch.stack([torch.from_numpy(np.roll(coco.annToMask(a), int(shift), axis=1)).bool() for a in anns])
        preds.append({"boxes": boxes, "scores": torch.linspace(0.9, 0.6, len(anns)),
                      "labels": torch.tensor([CAT_IDS.index(a["category_id"]) for a in anns]), "masks": masks})
        metas.append({"image_id": img_id})
    return preds, metas


@pytest.fixture(scope="module")
def coco():
    return load_coco(_dataset())


def test_xyxy_to_xywh_is_mmdet_convention():
    assert xyxy_to_xywh(torch.tensor([[10.0, 20.0, 30.0, 60.0]])).tolist() == [[10.0, 20.0, 20.0, 40.0]]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_ground_truth_predictions_score_100_and_shifted_less(coco, iou_type):
    make = coco_results_bbox if iou_type == "bbox" else coco_results_segm
    perfect = evaluate_coco(coco, make(*_predictions(coco), CAT_IDS), iou_type)
    assert set(perfect) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
    assert perfect["AP"] == pytest.approx(100.0) and perfect["AP50"] == pytest.approx(100.0)
    assert perfect["AR100"] == pytest.approx(100.0)
    assert math.isnan(perfect["APs"]) or perfect["APs"] == pytest.approx(100.0)  # -1 (no such objects) -> NaN
    assert "Average Precision" in perfect.summary and "maxDets=100" in perfect.summary
    shifted = evaluate_coco(coco, make(*_predictions(coco, shift=8.0), CAT_IDS), iou_type)
    assert shifted["AP"] < perfect["AP"] - 10
    assert shifted["AP75"] < shifted["AP50"] <= 100.0


def test_segm_results_are_rle_with_str_counts_and_round_trip(coco, tmp_path):
    from pycocotools import mask as mask_utils
    preds, metas = _predictions(coco)
    results = coco_results_segm(preds, metas, CAT_IDS)
    assert len(results) == 5 and isinstance(results[0]["segmentation"]["counts"], str)
    decoded = mask_utils.decode({**results[0]["segmentation"],
                                 "counts": results[0]["segmentation"]["counts"].encode()})
    assert (decoded.astype(bool) == preds[0]["masks"][0].numpy()).all()
    path = write_results_json(tmp_path / "segm.json", results)
    assert json.loads(path.read_text())[0]["category_id"] == 1
    assert evaluate_coco(coco, str(path), "segm")["AP"] == pytest.approx(100.0)  # a json path works too
    assert not list(tmp_path.glob(".*.tmp"))


def test_keypoint_ground_truth_scores_100_and_shifted_less(coco):
    def results(dx):
        out = []
        for a in coco.loadAnns(coco.getAnnIds(catIds=[1])):
            kp = np.array(a["keypoints"], dtype=np.float64).reshape(-1, 3)
            kp[:, 0] += dx
            out.append({"image_id": a["image_id"], "category_id": 1, "keypoints": kp.reshape(-1).tolist(),
                        "score": 0.9})
        return out
    perfect = evaluate_keypoints(coco, results(0.0))
    assert set(perfect) == {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}
    assert perfect["AP"] == pytest.approx(100.0)
    assert evaluate_coco(coco, results(0.0), "keypoints")["AP"] == pytest.approx(100.0)
    worse = evaluate_keypoints(coco, results(4.0))
    assert worse["AP"] < 90.0
    # a looser sigma forgives the same shift more
    assert evaluate_keypoints(coco, results(4.0), sigmas=COCO_SIGMAS * 3)["AP"] > worse["AP"]


def test_empty_results_and_bad_inputs(coco):
    empty = evaluate_coco(coco, [], "bbox")
    assert empty["AP"] == 0.0 and "no bbox results" in empty.summary
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate_coco(coco, [{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1.0}], "bbox")
    with pytest.raises(ValueError, match="outside the 2 categories"):
        coco_results_bbox([{"boxes": torch.zeros(1, 4), "scores": torch.ones(1), "labels": torch.tensor([2])}],
                          [{"image_id": 1}], CAT_IDS)
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_coco(coco, [], "boxes")


def test_img_ids_restricts_evaluation(coco):
    preds, metas = _predictions(coco)
    only_first = coco_results_bbox(preds[:1], metas[:1], CAT_IDS)
    assert evaluate_coco(coco, only_first, "bbox")["AR100"] < 100.0  # image 2's objects are missed
    assert evaluate_coco(coco, only_first, "bbox", img_ids=[1])["AP"] == pytest.approx(100.0)


def test_encode_mask_matches_area():
    m = np.zeros((20, 30), bool)
    m[2:7, 3:13] = True
    from pycocotools import mask as mask_utils
    rle = encode_mask(m)
    assert rle["size"] == [20, 30] and int(mask_utils.area({**rle, "counts": rle["counts"].encode()})) == 50

"""A small hand-made COCO keypoint dataset for the pose tests: people drawn as 17 coloured dots."""
import json
from pathlib import Path

import numpy as np

# a standing person in box-relative coordinates (COCO joint order)
TEMPLATE = np.array([[0.50, 0.08], [0.45, 0.05], [0.55, 0.05], [0.40, 0.07], [0.60, 0.07], [0.30, 0.24], [0.70, 0.24],
                     [0.22, 0.40], [0.78, 0.40], [0.18, 0.55], [0.82, 0.55], [0.38, 0.56], [0.62, 0.56], [0.36, 0.76],
                     [0.64, 0.76], [0.35, 0.95], [0.65, 0.95]])
JOINT_COLORS = np.array([[255, 255, 255], [255, 0, 0], [0, 255, 0], [255, 128, 0], [0, 128, 255], [255, 0, 255],
                         [0, 255, 255], [255, 255, 0], [128, 0, 255], [255, 128, 128], [128, 255, 128],
                         [128, 128, 255], [200, 100, 0], [0, 200, 100], [100, 0, 200], [200, 200, 200],
                         [90, 160, 40]], dtype=np.uint8)
SKELETON_1BASED = [[16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10],
                   [9, 11], [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7]]


def write_people(root, num_images: int = 4, size=(160, 120), seed: int = 0, people: int = 2, split: str = "train",
                 extras: bool = True):
    """Write ``root/images/<split>/*.png`` and ``root/annotations/person_keypoints_<split>.json``.

    Each image holds ``people`` persons; joint 3 of every second person is unlabelled (v = 0, x = y = 0).
    With ``extras`` the first image also gets a crowd region and a person without keypoints (both to be
    skipped by a top-down dataset). Returns (json path, image folder).
    """
    from PIL import Image, ImageDraw
    root = Path(root)
    img_dir = root / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    W, H = size
    images, anns = [], []
    for i in range(num_images):
        bg = rng.integers(0, 40, (H, W, 3), dtype=np.uint8)
        im = Image.fromarray(bg)
        draw = ImageDraw.Draw(im)
        for p in range(people):
            bw, bh = rng.uniform(30, 50), rng.uniform(60, 90)
            x0 = (W / people) * p + rng.uniform(0, max(W / people - bw, 1))
            y0 = rng.uniform(0, H - bh)
            pts = TEMPLATE * [bw, bh] + [x0, y0] + rng.normal(0, 1.0, (17, 2))
            v = np.full(17, 2.0)
            if p % 2 == 1:
                v[3] = 0
            for j, (x, y) in enumerate(pts):
                if v[j] > 0:
                    draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=tuple(int(c) for c in JOINT_COLORS[j]))
            kps = np.concatenate([np.where(v[:, None] > 0, pts, 0.0), v[:, None]], 1)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0,
                         "bbox": [float(x0), float(y0), float(bw), float(bh)], "area": float(bw * bh),
                         "keypoints": kps.round(2).reshape(-1).tolist(), "num_keypoints": int((v > 0).sum()),
                         "segmentation": [[x0, y0, x0 + bw, y0, x0 + bw, y0 + bh, x0, y0 + bh]]})
        if extras and i == 0:
            anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [0, 0, 20, 20],
                         "area": 400.0, "keypoints": [0] * 51, "num_keypoints": 0,
                         "segmentation": {"size": [H, W], "counts": [0, H * W]}})
            anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [5, 5, 20, 30],
                         "area": 600.0, "keypoints": [0] * 51, "num_keypoints": 0, "segmentation": []})
        name = f"{i + 1:06d}.png"
        im.save(img_dir / name)
        images.append({"id": i + 1, "file_name": name, "height": H, "width": W})
    cats = [{"id": 1, "name": "person", "supercategory": "person",
             "keypoints": ["nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                           "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
                           "left_knee", "right_knee", "left_ankle", "right_ankle"], "skeleton": SKELETON_1BASED}]
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    path = ann_dir / f"person_keypoints_{split}.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path, img_dir

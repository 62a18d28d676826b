"""Top-down COCO pose estimation (UniFormer's pose recipe: mmpose's TopDown + a deconvolution heatmap head).

Data: ``synthetic-keypoints`` (built in: articulated stick figures with 17 COCO keypoints and visibility
flags, generated once) or a COCO folder (``annotations/person_keypoints_{train,val}[2017].json`` and the
images). Training crops each person box (aspect 192:256, padding 1.25) with mmpose's flip, half-body,
scale and rotation augmentation and learns MSRA Gaussian heatmaps with the joints-MSE loss. Evaluation
predicts on the validation boxes (ground truth, or ``pose.bbox_file`` detections) with the flip test and
the quarter-pixel shift, rescores, applies OKS-NMS and scores OKS keypoint AP with pycocotools
(percent; ``best.pth`` by AP). Finish: ``model/``, ``results_keypoints.json``, ``coco_eval.txt`` and
``predictions/*.png`` with the skeletons drawn.
"""
from __future__ import annotations

from pathlib import Path

import torch

from vitlab.engine.schema import F
from vitlab.engine.task import Task
from vitlab.tasks.detection import load_initial_weights

POSE_SECTION = {
    "input_size": F([192, 256], "list", length=2, item="int", low=8, doc="crop width, height"),
    "heatmap_size": F([48, 64], "list", length=2, item="int", low=1, doc="heatmap width, height"),
    "sigma": F(2.0, "float", low=0.0, doc="Gaussian target sigma (heatmap pixels)"),
    "flip_test": F(True, "bool"),
    "bbox_file": F(None, "str", optional=True, doc="COCO detection results to evaluate on (default: gt boxes)"),
    "rot_factor": F(40.0, "float", low=0.0), "scale_factor": F(0.5, "float", low=0.0),
    "half_body_prob": F(0.3, "float", low=0.0, high=1.0),
    "data_root": F(None, "str", optional=True, doc="where the built-in set is written (default ~/.cache/vitlab)"),
    "backbone_weights": F(None, "str", optional=True, doc="an ImageNet checkpoint of the backbone"),
    "eval_limit": F(None, "int", optional=True, low=1),
    "visualize": F(4, "int", low=0, doc="validation images drawn with their predicted skeletons at the end"),
}


def pose_sets(cfg: dict, train: bool = True):
    """(train or None, val) :class:`~vitlab.pose.data.TopDownCocoKeypoints` of ``data.name``."""
    from vitlab.pose.data import TopDownCocoKeypoints
    from vitlab.tasks.detection import coco_root, coco_split
    p = cfg["pose"]
    root = coco_root(cfg, "keypoints")
    common = dict(input_size=tuple(p["input_size"]), heatmap_size=tuple(p["heatmap_size"]), sigma=p["sigma"])
    train_set = None
    if train:
        ann, img = coco_split(root, "train", "person_keypoints")
        train_set = TopDownCocoKeypoints(root / ann, root / img, train=True, rot_factor=p["rot_factor"],
                                         scale_factor=p["scale_factor"], half_body_prob=p["half_body_prob"], **common)
    ann, img = coco_split(root, "val", "person_keypoints")
    val_set = TopDownCocoKeypoints(root / ann, root / img, train=False, bbox_file=p["bbox_file"], **common)
    return train_set, val_set


class PoseLoss(torch.nn.Module):
    """``forward(images, heatmaps, weights) = model.loss(...)``, so DDP wraps the loss call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, heatmaps, weights):
        return self.model.loss(images, heatmaps, weights)


@torch.no_grad()
def predict_keypoints(model, dataset, device, dist, batch_size: int, workers: int, flip: bool, limit=None):
    """Every rank predicts its shard of the crops; the COCO keypoint entries of the whole set on every rank."""
    from vitlab.engine.distributed import all_gather_object
    from vitlab.engine.loaders import eval_loader
    from vitlab.pose.data import collate_topdown
    from vitlab.pose.evaluation import keypoint_results
    subset = dataset if limit is None else torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    was_training = model.training
    model.eval()
    entries = []
    for inputs, _, _ in eval_loader(subset, batch_size=batch_size, workers=workers, dist=dist,
                                    collate_fn=collate_topdown):
        if inputs is None:
            continue
        images, metas = inputs
        keypoints, box_scores = model.predict(images.to(device), metas, flip=flip)
        entries += keypoint_results(keypoints, metas, box_scores, dataset.category_id)
    model.train(was_training)
    return [e for part in all_gather_object(entries, dist) for e in part]


class PoseTask(Task):
    name = "pose"
    help = "top-down COCO pose estimation (deconvolution heatmap head, flip test, OKS AP by pycocotools)"
    sections = {"pose": POSE_SECTION}
    defaults = {
        "model": {"name": "topdown_micro"},
        "data": {"name": "synthetic-keypoints", "batch_size": 32, "eval_batch_size": 64},
        "optim": {"lr": 2e-3, "weight_decay": 0.01},
        "sched": {"name": "step", "epochs": 210, "milestones": [170, 200], "warmup_steps": 500, "warmup_lr": 2e-6},
        "run": {"log_every": 20, "eval_every": 10},
    }
    monitor = "AP"
    ddp_find_unused = True

    def build(self, session) -> None:
        import vitlab
        cfg = session.cfg
        self.train_set, self.val_set = pose_sets(cfg)
        p, m = cfg["pose"], cfg["model"]
        kwargs = dict(m["kwargs"])
        if m["drop_path"] is not None:
            from vitlab.models.registry import with_drop_path
            kwargs = with_drop_path(m["name"], kwargs, m["drop_path"])
        self.model = vitlab.create_model(m["name"], num_keypoints=self.train_set.num_keypoints,
                                         input_size=list(p["input_size"]), **kwargs)
        load_initial_weights(self.model, m["pretrained"], p["backbone_weights"], session.log)
        self.class_names = []
        self.info = {"dataset": cfg["data"]["name"], "train_people": len(self.train_set),
                     "val_people": len(self.val_set), "keypoints": self.train_set.num_keypoints}

    def collate_fn(self):
        from vitlab.pose.data import collate_topdown
        return collate_topdown

    def train_module(self):
        return PoseLoss(self.model)

    def describe(self, session) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        w, h = session.cfg["pose"]["input_size"]
        return (f"top-down pose on {session.cfg['model']['name']}: {n / 1e6:.3f}M params, crops {w}x{h}; data "
                f"{session.cfg['data']['name']}: {self.info['train_people']} train / {self.info['val_people']} val "
                f"people, {self.info['keypoints']} keypoints")

    def batch_size_of(self, batch) -> int:
        return int(batch[0][0].shape[0])

    def train_step(self, module, batch, session):
        (images, _), (heatmaps, weights) = batch
        d = session.device
        losses = module(images.to(d, non_blocking=True), heatmaps.to(d, non_blocking=True), weights.to(d))
        return losses["loss"], {"acc_pose": losses["acc_pose"]}

    def evaluate(self, session, model):
        from vitlab.pose.evaluation import evaluate_keypoints, rescore_and_nms
        cfg, p = session.cfg, session.cfg["pose"]
        entries = predict_keypoints(model, self.val_set, session.device, session.dist, cfg["data"]["eval_batch_size"],
                                    cfg["data"]["workers"], p["flip_test"], p["eval_limit"])
        results = rescore_and_nms(entries)
        img_ids = sorted({e["image_id"] for e in entries}) if p["eval_limit"] else None
        stats = evaluate_keypoints(self.val_set.coco, results, img_ids=img_ids)
        self._last = (results, stats.summary)
        return {**dict(stats), "people": len(entries)}

    def eval_line(self, m: dict) -> str:
        return f"OKS AP {m['AP']:.2f} AP50 {m['AP50']:.2f} AP75 {m['AP75']:.2f} AR {m['AR']:.2f} ({m['people']} people)"

    def finish(self, session, last_eval):
        from vitlab.checkpoints.atomic import atomic_write_text
        from vitlab.detection.coco_eval import write_results_json
        out = session.out
        self.model.save_pretrained(out / "model")
        if getattr(self, "_last", None) is not None:
            write_results_json(out / "results_keypoints.json", self._last[0])
            atomic_write_text(out / "coco_eval.txt", f"keypoints:\n{self._last[1]}\n")
            if session.cfg["pose"]["visualize"]:
                draw_skeletons(self.val_set, self._last[0], out / "predictions", session.cfg["pose"]["visualize"],
                               f"{session.cfg['model']['name']} ({out.name})")
        return {k: v for k, v in (last_eval or {}).items() if k in ("AP", "AP50", "AP75", "AR", "people")}

    def summary_line(self, s: dict) -> str:
        if "AP" not in s:
            return f"done -> {s['output']}"
        return f"OKS AP {s['AP']:.2f}  AP50 {s['AP50']:.2f}  -> {s['output']}"


def draw_skeletons(dataset, results: list[dict], folder: Path, count: int, title: str) -> list[Path]:
    """PNGs of the first ``count`` validation images: annotated skeletons (visible joints) beside the predicted."""
    import numpy as np

    from vitlab.data.folder import load_image
    from vitlab.detection.visualize import draw_detections
    paths = []
    for img_id in sorted({r["image_id"] for r in results})[:count]:
        info = dataset.coco.loadImgs(img_id)[0]
        people = [r for r in results if r["image_id"] == img_id]
        keypoints = np.array([np.reshape(r["keypoints"], (-1, 3)) for r in people], dtype=np.float32)
        image = load_image(str(Path(dataset.img_dir) / info["file_name"]), "RGB")
        annotated = [np.reshape(a["keypoints"], (-1, 3)) for a in dataset.coco.imgToAnns.get(img_id, [])
                     if a.get("num_keypoints", 0) > 0]
        truth = {"keypoints": np.array(annotated, dtype=np.float32).reshape(-1, keypoints.shape[1], 3)}
        paths.append(draw_detections(folder / f"{Path(info['file_name']).stem}.png", image,
                                     {"keypoints": keypoints, "scores": np.array([r["score"] for r in people])},
                                     truth=truth, score_thr=0.0, title=f"{title}: {info['file_name']}"))
    return paths

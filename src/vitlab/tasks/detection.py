"""COCO object detection and instance segmentation (Mask R-CNN / Cascade Mask R-CNN), mmdetection's recipe.

Data: ``synthetic-coco`` (built in: textured objects of 5 categories with exact masks, generated once)
or a COCO folder (``coco:ROOT`` or ``ROOT``: ``annotations/instances_{train,val}[2017].json`` with the
images in ``{train,val}[2017]/`` or ``images/{train,val}/``). Training: mmdet's keep-ratio resize to
``det.train_scales`` (one short side drawn per sample: multi-scale for the 3x schedules), horizontal
flip, ImageNet normalisation, padding to a multiple of 32; AdamW and the step schedule of the
official configs come from the shared sections. Evaluation: pycocotools' ``COCOeval`` on the val split
for boxes and masks (percent; ``best.pth`` by box AP). Finish: ``model/`` (with the class names),
``results_bbox.json`` / ``results_segm.json`` (COCO results), ``coco_eval.txt`` (the COCOeval tables)
and ``predictions/*.png`` (boxes, masks, class names drawn).
"""
from __future__ import annotations

from pathlib import Path

import torch

from vitlab.engine.schema import F
from vitlab.engine.task import Task
from vitlab.errors import ConfigError, DataError

DET_SECTION = {
    "train_scales": F([800], "list", item="int", low=1, doc="short sides for training (several: multi-scale)"),
    "max_size": F(1333, "int", low=1, doc="the long side's limit"),
    "test_scale": F(800, "int", low=1, doc="short side for evaluation"),
    "flip_prob": F(0.5, "float", low=0.0, high=1.0),
    "with_masks": F(True, "bool", doc="instance masks (Mask R-CNN); false trains boxes only"),
    "data_root": F(None, "str", optional=True, doc="where the built-in set is written (default ~/.cache/vitlab)"),
    "backbone_weights": F(None, "str", optional=True, doc="an ImageNet checkpoint of the backbone (model.pretrained: "
                                                           "a whole detector's)"),
    "eval_limit": F(None, "int", optional=True, low=1, doc="evaluate the first N validation images only"),
    "visualize": F(4, "int", low=0, doc="validation images drawn with their predictions at the end"),
    "score_thr": F(0.3, "float", low=0.0, high=1.0, doc="score threshold of the drawn predictions"),
}

SPLIT_NAMES = {"train": ("train", "train2017"), "val": ("val", "val2017", "validation")}


def coco_split(root: Path, split: str, kind: str = "instances") -> tuple[str, str]:
    """(annotation file, image folder) of ``split`` under a COCO-layout ``root``, relative to it."""
    for name in SPLIT_NAMES[split]:
        ann = Path("annotations") / f"{kind}_{name}.json"
        if (root / ann).is_file():
            for img in (Path("images") / name, Path(name), Path("images") / split):
                if (root / img).is_dir():
                    return str(ann), str(img)
            raise DataError(f"{root / ann} has no image folder next to it (looked for images/{name}/ and {name}/)")
    raise DataError(f"{root} has no {kind}_{split}.json (or {kind}_{split}2017.json) under annotations/: "
                    f"expected the COCO layout")


def coco_root(cfg: dict, kind: str = "instances") -> Path:
    """The COCO-layout root of ``data.name``; the built-in sets are generated on first use."""
    from vitlab.data import synthetic_coco
    name, section = cfg["data"]["name"], cfg.get("det") or cfg.get("pose") or {}
    builtin = {"synthetic-coco": ("instances", synthetic_coco.write_synthetic_instances),
               "synthetic-keypoints": ("keypoints", synthetic_coco.write_synthetic_keypoints)}
    if name in builtin:
        kind, write = builtin[name]
        root = Path(section.get("data_root") or cfg["data"]["root"] or synthetic_coco.default_root(kind))
        if not (root / "annotations").is_dir():   # an existing set (any size / seed) is used as it is
            write(root)
        return root
    root = Path(name.split(":", 1)[1] if name.startswith("coco:") else name)
    if not root.is_dir():
        raise DataError(f"--data {name!r}: expected synthetic-coco or a folder in the COCO layout "
                        f"(annotations/instances_train.json, ...)")
    return root


def detection_sets(cfg: dict, mean, std, train: bool = True):
    """(train or None, val) :class:`~vitlab.data.coco.CocoDetection` sets with mmdet's transforms."""
    from vitlab.data.coco import CocoDetection
    from vitlab.data.det_transforms import build_detection_transform
    det, root = cfg["det"], coco_root(cfg)
    mean255, std255 = [255 * m for m in mean], [255 * s for s in std]
    train_set = None
    if train:
        t = build_detection_transform(True, det["train_scales"], det["max_size"], det["flip_prob"], mean255, std255)
        train_set = CocoDetection(root, *coco_split(root, "train"), transform=t, with_masks=det["with_masks"])
    t = build_detection_transform(False, det["test_scale"], det["max_size"], 0.0, mean255, std255)
    val_set = CocoDetection(root, *coco_split(root, "val"), transform=t, with_masks=det["with_masks"],
                            filter_empty=False)
    return train_set, val_set


def load_initial_weights(model, whole: str | None, backbone: str | None, log) -> None:
    """A whole model's checkpoint (``model.pretrained``) and/or the backbone's, both reported.

    The backbone's is loaded strictly: a classification checkpoint of the same variant fits (its head
    and final norm are dropped, the per-stage output norms start fresh); any other raises naming the keys.
    """
    import vitlab
    if whole:
        log(f"initialised from {whole}: {vitlab.load_checkpoint(model, whole, strict=False)}")
    if backbone:
        log(f"backbone initialised from {backbone}: {vitlab.load_checkpoint(model.backbone, backbone, strict=True)}")


class DetectionLoss(torch.nn.Module):
    """``forward(images, targets, metas) = detector.loss(...)``, so DDP wraps the loss call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images, targets, metas):
        return self.model.loss(images, targets, metas)


def _to(target: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in target.items()}


@torch.no_grad()
def predict_coco(model, dataset, device, dist, batch_size: int, workers: int, limit: int | None = None):
    """Every rank predicts its shard; returns (bbox results, segm results) of the whole set on every rank."""
    from vitlab.data.det_transforms import collate_detection
    from vitlab.detection.coco_eval import coco_results_bbox, coco_results_segm
    from vitlab.engine.distributed import all_gather_object
    from vitlab.engine.loaders import eval_loader
    subset = dataset if limit is None else torch.utils.data.Subset(dataset, range(min(limit, len(dataset))))
    was_training = model.training
    model.eval()
    boxes, segms = [], []
    for inputs, _, _ in eval_loader(subset, batch_size=batch_size, workers=workers, dist=dist,
                                    collate_fn=collate_detection):
        if inputs is None:
            continue
        images, metas = inputs
        preds = model.predict(images.to(device), metas)
        boxes += coco_results_bbox(preds, metas, dataset.cat_ids)
        if preds and preds[0].get("masks") is not None:
            segms += coco_results_segm(preds, metas, dataset.cat_ids)
    model.train(was_training)
    gathered = all_gather_object((boxes, segms), dist)
    return [r for b, _ in gathered for r in b], [r for _, s in gathered for r in s]


def evaluate_detection(model, dataset, device, dist, batch_size: int, workers: int, limit=None) -> dict:
    """Box (and mask) AP of ``model`` on ``dataset`` by pycocotools, in percent, with the COCOeval tables."""
    from vitlab.detection.coco_eval import evaluate_coco
    boxes, segms = predict_coco(model, dataset, device, dist, batch_size, workers, limit)
    img_ids = dataset.ids[:limit] if limit else None
    out, tables = {}, {}
    for kind, results in (("bbox", boxes), ("segm", segms)):
        if kind == "segm" and not dataset.with_masks:
            continue
        stats = evaluate_coco(dataset.coco, results, kind, img_ids=img_ids)
        out.update({f"{kind}_{k}": v for k, v in stats.items()})
        tables[kind] = stats.summary
    out["images"] = len(dataset) if limit is None else min(limit, len(dataset))
    return {**out, "_tables": tables, "_results": {"bbox": boxes, "segm": segms}}


class DetectionTask(Task):
    name = "detection"
    help = "COCO object detection and instance segmentation (Mask R-CNN, Cascade Mask R-CNN; pycocotools AP)"
    sections = {"det": DET_SECTION}
    defaults = {
        "model": {"name": "mask_rcnn_micro"},
        "data": {"name": "synthetic-coco", "batch_size": 2, "eval_batch_size": 2},
        "optim": {"lr": 1e-4, "weight_decay": 0.05},
        "sched": {"name": "step", "epochs": 12, "milestones": [8, 11], "warmup_steps": 500, "warmup_lr": 1e-7},
        "run": {"log_every": 20},
    }
    monitor = "bbox_AP"
    ddp_find_unused = True       # e.g. a Swin backbone's final norm feeds no FPN level

    def build(self, session) -> None:
        import vitlab
        from vitlab.models.registry import build_without_weights
        cfg = session.cfg
        kwargs = dict(cfg["model"]["kwargs"])
        pre = build_without_weights(cfg["model"]["name"], **kwargs).pretrained_cfg
        self.train_set, self.val_set = detection_sets(cfg, pre["mean"], pre["std"])
        k = self.train_set.num_classes
        if kwargs.pop("num_classes", k) != k:
            raise ConfigError(f"model.kwargs.num_classes={cfg['model']['kwargs']['num_classes']} but the data has {k} "
                              f"categories; leave num_classes out (the heads are sized from the data)")
        if cfg["model"]["drop_path"] is not None:
            from vitlab.models.registry import with_drop_path
            kwargs = with_drop_path(cfg["model"]["name"], kwargs, cfg["model"]["drop_path"])
        self.model = vitlab.create_model(cfg["model"]["name"], num_classes=k, **kwargs)
        load_initial_weights(self.model, cfg["model"]["pretrained"], cfg["det"]["backbone_weights"], session.log)
        self.class_names = list(self.train_set.class_names)
        self.info = {"dataset": cfg["data"]["name"], "root": str(self.train_set.root), "classes": k,
                     "train": len(self.train_set), "val": len(self.val_set)}

    def collate_fn(self):
        from vitlab.data.det_transforms import collate_detection
        return collate_detection

    def train_module(self):
        return DetectionLoss(self.model)

    def describe(self, session) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        det = session.cfg["det"]
        return (f"model {session.cfg['model']['name']}: {n / 1e6:.3f}M params, short side {det['train_scales']} "
                f"(max {det['max_size']}); data {self.info['root']}: {self.info['train']} train / {self.info['val']} "
                f"val images, {self.info['classes']} categories")

    def batch_size_of(self, batch) -> int:
        return int(batch[0][0].shape[0])

    def train_step(self, module, batch, session):
        (images, metas), targets = batch
        targets = [_to(t, session.device) for t in targets]
        losses = module(images.to(session.device, non_blocking=True), targets, metas)
        return losses["loss"], {k: v for k, v in losses.items() if k != "loss"}

    def evaluate(self, session, model):
        cfg = session.cfg
        res = evaluate_detection(model, self.val_set, session.device, session.dist, cfg["data"]["eval_batch_size"],
                                 cfg["data"]["workers"], cfg["det"]["eval_limit"])
        self._last = res
        return {k: v for k, v in res.items() if not k.startswith("_")}

    def eval_line(self, m: dict) -> str:
        text = f"box AP {m['bbox_AP']:.2f} AP50 {m['bbox_AP50']:.2f} AP75 {m['bbox_AP75']:.2f}"
        if "segm_AP" in m:
            text += f" | mask AP {m['segm_AP']:.2f} AP50 {m['segm_AP50']:.2f}"
        return text + f" ({m['images']} images)"

    def finish(self, session, last_eval):
        from vitlab.checkpoints.atomic import atomic_write_text
        from vitlab.detection.coco_eval import write_results_json
        out = session.out
        self.model.save_pretrained(out / "model", label_names=self.class_names)
        last = getattr(self, "_last", None)
        if last is not None:
            for kind, results in last["_results"].items():
                if results:
                    write_results_json(out / f"results_{kind}.json", results)
            atomic_write_text(out / "coco_eval.txt", "".join(f"{kind}:\n{text}\n\n" for kind, text
                                                             in last["_tables"].items()))
        if session.cfg["det"]["visualize"]:
            draw_predictions(self.model, self.val_set, session.device, out / "predictions",
                             session.cfg["det"]["visualize"], session.cfg["det"]["score_thr"],
                             f"{session.cfg['model']['name']} ({out.name})")
        return {k: v for k, v in (last_eval or {}).items() if k.startswith(("bbox_", "segm_"))}

    def summary_line(self, s: dict) -> str:
        if "bbox_AP" not in s:
            return f"done -> {s['output']}"
        mask = f"  mask AP {s['segm_AP']:.2f} AP50 {s['segm_AP50']:.2f}" if "segm_AP" in s else ""
        return f"box AP {s['bbox_AP']:.2f} AP50 {s['bbox_AP50']:.2f}{mask}  -> {s['output']}"


@torch.no_grad()
def draw_predictions(model, dataset, device, folder: Path, count: int, score_thr: float, title: str) -> list[Path]:
    """PNGs of the first ``count`` images of ``dataset``: the ground truth beside the predictions above ``score_thr``."""
    from vitlab.data.det_transforms import collate_detection
    from vitlab.data.folder import load_image
    from vitlab.detection.visualize import draw_detections
    model.eval()
    paths = []
    for i in range(min(count, len(dataset))):
        (images, metas), _, _ = collate_detection([dataset[i]])
        pred = model.predict(images.to(device), metas)[0]
        image = load_image(str(dataset.image_path(i)), "RGB")
        truth = dataset.target(i)
        truth["masks"] = None if truth["masks"] is None else truth["masks"].bool()
        paths.append(draw_detections(folder / f"{Path(metas[0]['file_name']).stem}.png", image, pred, truth=truth,
                                     class_names=dataset.class_names, score_thr=score_thr,
                                     title=f"{title}: {metas[0]['file_name']}"))
    return paths

"""Semantic segmentation (SegViT, UperNet, Semantic FPN) in mmsegmentation's recipe, on the one engine.

Data: ``texture-scenes`` (built in: textured regions with exact masks, generated once) or a folder in
the ADE20K layout (``images/{training,validation}``, ``annotations/...``; ``dataset.json`` may name
the classes and say ``reduce_zero_label``). Training crops follow mmseg's pipeline (random rescale in
``seg.ratio_range``, crop with ``cat_max_ratio``, flip, photometric distortion, padding with the ignore
label). Optimisation: AdamW, the decode head at ``optim.lr_mult.decode_head`` x the lr (``--head-lr-mult``;
SegViT uses 10), and mmcv's poly schedule over all iterations (``sched.steps``) with a linear warm-up.
Evaluation: whole-image or sliding-window inference (``seg.mode``), optional multi-scale + flip,
mIoU / mAcc / aAcc in percent (the areas summed over every image and every rank). The run folder
keeps the class names and ``reduce_zero_label`` in ``model/config.json`` (and ``config.yaml``) so
``vitlab segment eval RUN`` reads the data the same way.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vitlab.engine.schema import PAIR, F as Field
from vitlab.engine.task import Task
from vitlab.errors import ConfigError, DataError

SEG_SECTION = {
    "reduce_zero_label": Field(None, "bool", optional=True, doc="label 0 is 'other' -> ignored, c -> c-1 (ADE20K); "
                                                              "default: dataset.json's value, else false"),
    "num_classes": Field(None, "int", optional=True, low=1, doc="for folders without dataset.json classes"),
    "ignore_index": Field(255, "int", low=0),
    "crop_size": Field(64, "int", low=1, doc="training crop and sliding-window size"),
    "scale": Field(None, "int", optional=True, low=1, doc="short side before the random ratio (default: the image's)"),
    "ratio_range": Field([0.5, 2.0], low=0.0, **PAIR),
    "cat_max_ratio": Field(0.75, "float", low=0.0, high=1.0),
    "flip_prob": Field(0.5, "float", low=0.0, high=1.0),
    "photometric": Field(True, "bool"),
    "mode": Field(None, "str", optional=True, choices=(None, "whole", "slide"), doc="inference (default: the model's)"),
    "stride": Field(None, "int", optional=True, low=1, doc="sliding-window stride"),
    "test_scales": Field([1.0], "list", item="float", low=0.0, doc="multi-scale test ratios"),
    "test_flip": Field(False, "bool"),
    "eval_limit": Field(None, "int", optional=True, low=1, doc="evaluate the first N validation images only"),
    "overlays": Field(4, "int", low=0, doc="validation overlays written at the end"),
    "backbone_weights": Field(None, "str", optional=True, doc="a backbone checkpoint (timm or mmseg layout)"),
    "data_root": Field(None, "str", optional=True, doc="where the built-in set is written (default ~/.cache/vitlab)"),
}


def resolve_data_root(cfg: dict) -> tuple[Path, str | None]:
    """The folder of ``data.name`` and its layout (None: the folder's ``dataset.json`` or ADE20K-style folders).

    ``texture-scenes`` (generated on first use), ``ade20k:PATH``, ``coco-stuff10k:PATH``,
    ``pascal-context:PATH``, ``pascal-context-59:PATH`` (:mod:`vitlab.data.seg_layouts`), or
    ``folder:PATH`` / ``ade:PATH`` / ``PATH``.
    """
    from vitlab.data.seg_layouts import LAYOUTS
    from vitlab.data.synthetic_scenes import ensure_texture_scenes
    name = cfg["data"]["name"]
    if name == "texture-scenes":
        return ensure_texture_scenes(cfg["seg"]["data_root"] or cfg["data"]["root"]), None
    prefix, _, rest = name.partition(":")
    layout = prefix if rest and prefix in LAYOUTS else None
    root = Path(rest if layout or (rest and prefix in ("folder", "ade")) else name)
    if not root.is_dir():
        raise DataError(f"--data {name!r}: expected 'texture-scenes', {', '.join(f'{k}:PATH' for k in LAYOUTS if k)} "
                        f"or a folder in the ADE20K layout (images/training, annotations/training, ...)")
    return root, layout


def segmentation_sets(cfg: dict, mean, std, train: bool = True):
    """(train or None, val) :class:`SegmentationFolder` s; ``cfg['seg']`` gets the resolved class count and labels."""
    from vitlab.data.segmentation import SegAugment, SegmentationFolder
    root, layout = resolve_data_root(cfg)
    seg = cfg["seg"]
    probe = SegmentationFolder(root, "validation", num_classes=seg["num_classes"], layout=layout)
    reduce = seg["reduce_zero_label"]
    if reduce is None:
        reduce = bool(probe.meta.get("reduce_zero_label", False))
    common = dict(num_classes=seg["num_classes"] or probe.num_classes, reduce_zero_label=reduce, mean=mean,
                  std=std, ignore_index=seg["ignore_index"], layout=layout)
    if not common["num_classes"]:
        raise DataError(f"{root} has no dataset.json with class names: set seg.num_classes (--num-classes)")
    aug = SegAugment(crop_size=seg["crop_size"], scale=seg["scale"], ratio_range=tuple(seg["ratio_range"]),
                     cat_max_ratio=seg["cat_max_ratio"], flip_prob=seg["flip_prob"], photometric=seg["photometric"],
                     ignore_index=seg["ignore_index"])
    train_set = SegmentationFolder(root, "training", augment=aug, **common) if train else None
    val_set = SegmentationFolder(root, "validation", **common)
    seg["reduce_zero_label"], seg["num_classes"] = reduce, common["num_classes"]
    return train_set, val_set


@torch.no_grad()
def predict_label_map(model, img: torch.Tensor, size, seg: dict, device, amp: str | None) -> torch.Tensor:
    """(H, W) class map of one normalised (3, h, w) image, at the label's size ``size``."""
    from vitlab.engine.runtime import autocast
    from vitlab.segmentation.inference import predict_segmentor
    crop = seg["crop_size"] if seg["mode"] == "slide" else None
    with autocast(device, amp):
        scores = predict_segmentor(model, img[None].to(device), seg["mode"], crop, seg["stride"],
                                   tuple(seg["test_scales"]), seg["test_flip"]).float()
    if tuple(scores.shape[-2:]) != tuple(size):
        scores = F.interpolate(scores, size=tuple(size), mode="bilinear", align_corners=False)
    return scores.argmax(1)[0].cpu()


@torch.no_grad()
def evaluate_segmentation(model, dataset, seg: dict, device, dist, amp: str | None = None) -> dict:
    """mIoU / mAcc / aAcc (percent) over ``dataset``; each rank takes its shard, the class areas are summed."""
    from vitlab.data.sampler import ShardSampler
    from vitlab.segmentation.metrics import SegmentationMetric
    was_training = model.training
    model.eval()
    metric = SegmentationMetric(dataset.num_classes, dataset.ignore_index, dataset.class_names or None)
    n = len(dataset) if seg["eval_limit"] is None else min(seg["eval_limit"], len(dataset))
    for i in ShardSampler(n, dist.rank, dist.world_size):
        img, label = dataset[i]
        metric.update(predict_label_map(model, img, label.shape, seg, device, amp), label)
    metric.sync()
    model.train(was_training)
    return {**metric.compute(), "count": n}


@torch.no_grad()
def write_overlays(model, dataset, seg: dict, device, folder: Path, count: int, title: str) -> list[Path]:
    """Overlay PNGs (image | prediction | ground truth, class legend) of the first ``count`` images."""
    from vitlab.segmentation.visualize import save_overlay
    model.eval()
    paths = []
    for i in range(min(count, len(dataset))):
        img, label = dataset[i]
        pred = predict_label_map(model, img, label.shape, seg, device, None)
        paths.append(save_overlay(folder / f"{dataset.images[i].stem}.png", dataset.denormalize(img), pred, label,
                                  dataset.num_classes, dataset.class_names, f"{title}: {dataset.images[i].name}",
                                  dataset.ignore_index))
    return paths


class LossForward(torch.nn.Module):
    """``forward(img, label) = segmentor.loss(img, label)`` (a dict of loss terms), so DDP wraps the loss call."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, img, label):
        return self.model.loss(img, label)


class SegmentationTask(Task):
    name = "segmentation"
    help = "semantic segmentation (SegViT / UperNet / Semantic FPN) on ADE20K-layout folders or texture-scenes"
    sections = {"seg": SEG_SECTION}
    defaults = {
        "model": {"name": "segvit_micro"},
        "data": {"name": "texture-scenes", "batch_size": 8},
        "optim": {"lr": 1e-3, "weight_decay": 0.01, "clip_grad": 1.0},
        "sched": {"name": "poly", "steps": 2000, "warmup_steps": 100, "warmup_lr": 0.0, "min_lr": 0.0, "power": 1.0},
        "run": {"log_every": 20, "eval_every": 0, "eval_every_steps": 500},
    }
    monitor = "mIoU"

    def build(self, session) -> None:
        import vitlab
        from vitlab.models.registry import build_without_weights
        cfg = session.cfg
        kwargs = dict(cfg["model"]["kwargs"])
        probe = build_without_weights(cfg["model"]["name"], **kwargs)
        pre = probe.pretrained_cfg
        self.train_set, self.val_set = segmentation_sets(cfg, pre["mean"], pre["std"])
        k = cfg["seg"]["num_classes"]
        if kwargs.pop("num_classes", k) != k:
            raise ConfigError(f"model.kwargs.num_classes={cfg['model']['kwargs']['num_classes']} but the data has {k} "
                              f"classes; leave num_classes out (the head is sized from the data)")
        if cfg["model"]["drop_path"] is not None:
            from vitlab.models.registry import with_drop_path
            kwargs = with_drop_path(cfg["model"]["name"], kwargs, cfg["model"]["drop_path"])
        self.model = vitlab.create_model(cfg["model"]["name"], num_classes=k, **kwargs)
        for source, target, strict in ((cfg["model"]["pretrained"], self.model, False),
                                       (cfg["seg"]["backbone_weights"], self.model.backbone, False)):
            if source:
                session.log(f"initialised from {source}: {vitlab.load_checkpoint(target, source, strict=strict)}")
        self.class_names = list(self.val_set.class_names)
        self.info = {"dataset": cfg["data"]["name"], "root": str(self.val_set.root), "classes": k,
                     "train": len(self.train_set), "val": len(self.val_set),
                     "reduce_zero_label": cfg["seg"]["reduce_zero_label"]}

    def train_module(self):
        return LossForward(self.model)

    def describe(self, session) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        seg = session.cfg["seg"]
        return (f"model {session.cfg['model']['name']}: {n / 1e6:.3f}M params, crops {seg['crop_size']} px; data "
                f"{self.info['root']}: {self.info['train']} train / {self.info['val']} val images, "
                f"{self.info['classes']} classes, reduce_zero_label={seg['reduce_zero_label']}")

    def train_step(self, module, batch, session):
        img, label = batch
        losses = module(img.to(session.device, non_blocking=True), label.to(session.device, non_blocking=True))
        return losses["loss"], {k: v for k, v in losses.items() if k != "loss"}

    def evaluate(self, session, model):
        return evaluate_segmentation(model, self.val_set, session.cfg["seg"], session.device, session.dist,
                                     session.amp)

    def eval_line(self, m: dict) -> str:
        return f"mIoU {m['mIoU']:.2f}% mAcc {m['mAcc']:.2f}% aAcc {m['aAcc']:.2f}% ({m['count']} images)"

    def finish(self, session, last_eval):
        from vitlab.checkpoints.atomic import atomic_write_json, atomic_write_text
        from vitlab.segmentation.metrics import format_table
        seg, out = session.cfg["seg"], session.out
        self.model.save_pretrained(out / "model", label_names=self.class_names,
                                   dataset={"reduce_zero_label": seg["reduce_zero_label"],
                                            "ignore_index": seg["ignore_index"], "classes": self.class_names})
        if seg["overlays"]:
            title = f"{session.cfg['model']['name']} ({out.name}), step {session.pos.step}"
            write_overlays(self.model, self.val_set, seg, session.device, out / "overlays", seg["overlays"], title)
        summary = {k: last_eval[k] for k in ("mIoU", "mAcc", "aAcc", "count")} if last_eval else {}
        if last_eval:
            atomic_write_json(out / "eval.json", last_eval)
            atomic_write_text(out / "per_class.txt", format_table(last_eval) + "\n")
        return summary

    def summary_line(self, s: dict) -> str:
        if "mIoU" not in s:
            return f"done -> {s['output']}"
        return f"mIoU {s['mIoU']:.2f}%  mAcc {s['mAcc']:.2f}%  aAcc {s['aAcc']:.2f}%  -> {s['output']}"

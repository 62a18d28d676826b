"""Image classification on any registered backbone and dataset (the timm / DeiT recipe family).

Build: the dataset (``data.name``) with timm-style transforms from the model's ``pretrained_cfg``
(random-resized crop, flip, RandAugment, colour jitter, random erasing; resize + centre crop for
evaluation) and the model with a head for the dataset's classes. With ``aug.device_prep`` (off by
default) the workers send uint8 crops (JPEGs decoded in draft mode when the crop allows,
``aug.jpeg_draft``) and the step normalises and erases the batch on the device
(:class:`~vitlab.data.device_prep.BatchPrep`, seeded per step). Step: Mixup/CutMix with label
smoothing, then the loss of :func:`~vitlab.engine.losses.classification_loss` on the model's
:meth:`forward_train` output (class token CE + ``loss.aux_weight`` x token CE for token-labeling
models, with token-label maps when ``aug.token_labels`` names a folder of per-image maps, warped with each
sample's crop and flip and mixed like the images, or a single (N, K, h, w) file). Evaluate: top-1 / top-5,
loss, per-class accuracy and the confusion matrix on the held-out split. Finish: ``model/`` (a
``from_pretrained`` folder with the class names), ``confusion.png``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from vitlab.engine.evaluate import evaluate
from vitlab.engine.loaders import eval_loader
from vitlab.engine.losses import classification_loss
from vitlab.engine.schema import PAIR, F
from vitlab.engine.task import Task
from vitlab.errors import ConfigError, DataError

AUG_SECTION = {
    "scale": F([0.08, 1.0], low=0.0, high=1.0, **PAIR), "ratio": F([0.75, 1.3333333], low=0.0, **PAIR),
    "hflip": F(0.5, "float", low=0.0, high=1.0), "color_jitter": F(0.0, "float", low=0.0),
    "auto_augment": F(None, "str", optional=True, doc="RandAugment string, e.g. rand-m9-mstd0.5-inc1"),
    "reprob": F(0.0, "float", low=0.0, high=1.0), "remode": F("pixel", "str", choices=("pixel", "rand", "const")),
    "recount": F(1, "int", low=1), "interpolation": F("bicubic", "str", choices=("nearest", "bilinear", "bicubic")),
    "crop_pct": F(None, "float", optional=True, low=0.0, high=2.0, doc="eval crop (default: the model's)"),
    "mixup": F(0.0, "float", low=0.0), "cutmix": F(0.0, "float", low=0.0),
    "mix_prob": F(1.0, "float", low=0.0, high=1.0), "switch_prob": F(0.5, "float", low=0.0, high=1.0),
    "smoothing": F(0.1, "float", low=0.0, high=1.0),
    "device_prep": F(False, "bool", doc="workers send uint8 crops; normalisation and random erasing run on the "
                                        "training device, in batch (false: float images from the workers)"),
    "jpeg_draft": F(True, "bool", doc="decode JPEGs at 1/2, 1/4 or 1/8 scale when the random crop is at least that "
                                      "many times the output in both sides (with device_prep)"),
    "mix_token": F(False, "bool", doc="MixToken (VOLO / token-labeling UniFormer)"),
    "token_labels": F(None, "str", optional=True, doc="folder of per-image (2, k, h, w) top-k maps (vitlab "
                                                   "token-labels generate) or one (N, K, h, w) file"),
}
LOSS_SECTION = {"aux_weight": F(0.5, "float", low=0.0, doc="weight of the token-labeling (aux head) loss")}


def probe_pretrained_cfg(name: str, kwargs: dict) -> dict:
    """The model's preprocessing config, built on the meta device (no memory, no init cost)."""
    from vitlab.models.registry import create_model
    with torch.device("meta"):
        return dict(create_model(name, **kwargs).pretrained_cfg)


def model_kwargs(cfg: dict) -> dict:
    """``model.kwargs`` plus ``data.img_size``; a ``num_classes`` there must not contradict the data."""
    kwargs = dict(cfg["model"]["kwargs"])
    if cfg["data"]["img_size"] and "img_size" not in kwargs:
        kwargs["img_size"] = cfg["data"]["img_size"]
    return kwargs


def build_image_data(cfg: dict, splits=("train", "val"), pretrained_cfg: dict | None = None):
    """Datasets with the classification transforms; returns (bundle, resolved input settings)."""
    from vitlab.data.registry import DataRequest, build_dataset, parse_data_spec
    from vitlab.data.transforms import build_eval_transform, build_train_transform, match_channels
    from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD
    dcfg, acfg, kwargs = cfg["data"], cfg["aug"], model_kwargs(cfg)
    pre = pretrained_cfg or probe_pretrained_cfg(cfg["model"]["name"], kwargs)
    input_size = tuple(pre.get("input_size", (3, 224, 224)))
    in_chans = int(kwargs.get("in_chans", input_size[0]))
    img_size = int(dcfg["img_size"] or input_size[-1])
    mean = match_channels(pre.get("mean", IMAGENET_MEAN), in_chans)
    std = match_channels(pre.get("std", IMAGENET_STD), in_chans)
    train_t = build_train_transform(img_size, mean, std, in_chans, scale=acfg["scale"], ratio=acfg["ratio"],
                                    hflip=acfg["hflip"], color_jitter=acfg["color_jitter"],
                                    auto_augment=acfg["auto_augment"], reprob=acfg["reprob"], remode=acfg["remode"],
                                    recount=acfg["recount"], interpolation=acfg["interpolation"],
                                    output="uint8" if acfg["device_prep"] else "float",
                                    draft=bool(acfg["device_prep"] and acfg["jpeg_draft"]))
    eval_t = build_eval_transform({**pre, "input_size": (in_chans, img_size, img_size)}, in_chans, mean, std,
                                  img_size, acfg["crop_pct"])
    name, root = parse_data_spec(dcfg["name"])
    request = DataRequest(name=name, root=root or dcfg["root"], input_size=(in_chans, img_size, img_size),
                          train_transform=train_t, eval_transform=eval_t, seed=cfg["run"]["seed"],
                          splits=tuple(splits), options=dict(dcfg["options"]))
    bundle = build_dataset(request)
    if bundle.mean is not None and bundle.std is not None:
        mean, std = match_channels(bundle.mean, in_chans), match_channels(bundle.std, in_chans)
        for t in (train_t, eval_t):
            t.set_normalization(mean, std)
    return bundle, {"img_size": img_size, "in_chans": in_chans, "mean": list(mean), "std": list(std),
                    "model_kwargs": kwargs}


def build_classifier(cfg: dict, num_classes: int, kwargs: dict) -> nn.Module:
    """``create_model`` for ``num_classes``, with drop-path, MixToken, initial weights and frozen BatchNorm."""
    from vitlab.models.registry import create_model
    mcfg, kwargs = cfg["model"], dict(kwargs)
    if "num_classes" in kwargs and kwargs.pop("num_classes") != num_classes:
        raise ConfigError(f"model.kwargs.num_classes={mcfg['kwargs']['num_classes']} but the dataset "
                          f"{cfg['data']['name']!r} has {num_classes} classes; leave num_classes out (the head "
                          f"is sized from the data)")
    if mcfg["drop_path"] is not None:
        from vitlab.models.registry import with_drop_path
        kwargs = with_drop_path(mcfg["name"], kwargs, mcfg["drop_path"])
    if cfg["aug"]["mix_token"]:
        kwargs["mix_token"] = True
    model = create_model(mcfg["name"], num_classes=num_classes, **kwargs)
    if mcfg["pretrained"]:
        print(f"initialised from {mcfg['pretrained']}: {load_fine_tune_weights(model, mcfg['pretrained'])}",
              flush=True)
    if mcfg["freeze_bn"]:
        from vitlab.layers import freeze_batch_norm
        model = freeze_batch_norm(model)
    return model


def load_fine_tune_weights(model: nn.Module, path):
    """``model.pretrained``: the checkpoint's classifier is kept when it has the model's classes (a resolution
    fine-tune continues the 224 run's heads, as the official VOLO / UniFormer fine-tunes do) and left out
    when it has another number (a new head for a new dataset). Extra keys (e.g. EsViT's DINO heads) are
    reported, not refused; wrong shapes outside the classifier are refused."""
    from vitlab.checkpoints.load import CheckpointError, classifier_keys, load_checkpoint
    try:
        return load_checkpoint(model, path, strict=False)
    except CheckpointError as e:
        heads = classifier_keys(model)
        if not heads or not any(k in str(e) for k in heads):
            raise
    return load_checkpoint(model, path, strict=False, drop_classifier=True)


def batch_prep(acfg: dict, resolved: dict):
    """The device-side end of the uint8 pipeline: normalise with the resolved statistics, erase as ``aug`` says."""
    from vitlab.data.device_prep import BatchPrep
    return BatchPrep(mean=resolved["mean"], std=resolved["std"], reprob=acfg["reprob"], remode=acfg["remode"],
                     recount=acfg["recount"])


def prep_seed(session) -> int:
    """Seed of a micro-batch's random erasing: a function of (run seed, step, micro-batch, rank), so a resumed
    run erases the same boxes; independent of the Mixup stream."""
    seq = np.random.SeedSequence([session.cfg["run"]["seed"], session.pos.step, session.micro, session.dist.rank, 7])
    return int(seq.generate_state(1, dtype=np.uint64)[0] >> 1)


class TrainForward(nn.Module):
    """``forward(x) = model.forward_train(x)`` (token-labeling outputs), so DDP wraps the training call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        train = getattr(self.model, "forward_train", None)
        return train(x) if train is not None else self.model(x)


class ClassificationTask(Task):
    name = "classification"
    help = "image classification on any registered backbone and image dataset"
    sections = {"aug": AUG_SECTION, "loss": LOSS_SECTION}
    defaults: dict = {}
    monitor = "top1"

    def build(self, session) -> None:
        from vitlab.data.mixup import Mixup
        cfg = session.cfg
        bundle, self.resolved = build_image_data(cfg)
        if bundle.train is None or len(bundle.train) == 0:
            raise DataError(f"dataset {cfg['data']['name']!r} has no training images")
        if not bundle.labelled:
            raise DataError(f"dataset {cfg['data']['name']!r} has no labels; classification needs one folder per class")
        self.class_names, self.bundle = list(bundle.class_names), bundle
        k = bundle.num_classes
        self.train_set = bundle.train
        if cfg["aug"]["token_labels"]:
            from vitlab.data import token_labels as tl
            path = cfg["aug"]["token_labels"]
            tl.check_token_label_recipe(cfg["aug"], warped=tl.is_label_folder(path))
            self.train_set = (tl.TokenLabelFolderDataset(bundle.train, path, k, bundle.class_names)
                              if tl.is_label_folder(path) else
                              tl.TokenLabelDataset(bundle.train, tl.load_token_label_maps(path), k))
        self.model = build_classifier(cfg, k, self.resolved["model_kwargs"])
        a = cfg["aug"]
        self.mixup = Mixup(k, a["mixup"], a["cutmix"], a["mix_prob"], a["switch_prob"], a["smoothing"])
        self.prep = batch_prep(a, self.resolved)
        self.info = {"dataset": cfg["data"]["name"], "classes": k, "train": len(bundle.train),
                     "val": len(bundle.val) if bundle.val is not None else 0,
                     **{key: v for key, v in bundle.info.items() if isinstance(v, (int, float, str))}}
        self._val_loader = None

    def train_module(self) -> nn.Module:
        return TrainForward(self.model)

    def describe(self, session) -> str:
        r, b = self.resolved, self.bundle
        n = sum(p.numel() for p in self.model.parameters())
        moved = b.info.get("duplicates_moved_to_train")
        return (f"model {session.cfg['model']['name']}: {n / 1e6:.3f}M params, input {r['in_chans']}x{r['img_size']}x"
                f"{r['img_size']}; data {session.cfg['data']['name']}: {len(b.train)} train / "
                f"{len(b.val) if b.val is not None else 0} held-out, {b.num_classes} classes"
                + (f" ({moved} duplicate images moved to train)" if moved else ""))

    def train_step(self, module, batch, session):
        x, y = batch
        maps = records = None
        if isinstance(x, (list, tuple)):  # token-labeling maps (or per-image records + crop geometry) ride along
            x, maps = x[0], x[1]
            if isinstance(maps, (list, tuple)):
                records, maps = [t.to(session.device, non_blocking=True) for t in maps], None
            else:
                maps = maps.to(session.device, non_blocking=True)
        x, y = x.to(session.device, non_blocking=True), y.to(session.device, non_blocking=True)
        if x.dtype == torch.uint8:  # the fast pipeline's crops: normalise and erase here, in batch
            x = self.prep(x, prep_seed(session))
        k = len(self.class_names)
        if int(y.min()) < 0 or int(y.max()) >= k:
            raise DataError(f"labels must be in [0, {k - 1}], got {int(y.min())}..{int(y.max())}")
        if session.cfg["model"]["channels_last"] and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        rng = np.random.default_rng([session.cfg["run"]["seed"], session.pos.step, session.micro, session.dist.rank])
        x, target, lam, box = self.mixup.mix(x, y, rng)
        out = module(x)
        if records is not None:  # warp each image's map with its crop/flip to the aux grid, mix like the images
            from vitlab.data.mixup import mix_maps
            from vitlab.data.token_labels import aux_grid, warp_token_labels
            maps = warp_token_labels(*records, k, aux_grid(out), session.cfg["aug"]["smoothing"])
            maps = mix_maps(maps, lam, box, tuple(x.shape[-2:]))
        return classification_loss(out, target, session.cfg["loss"]["aux_weight"], token_maps=maps), {}

    def val_loader(self, session):
        if self._val_loader is None and self.bundle.val is not None:
            self._val_loader = eval_loader(self.bundle.val, batch_size=session.cfg["data"]["eval_batch_size"],
                                           workers=session.cfg["data"]["workers"], dist=session.dist,
                                           pin_memory=session.device.type == "cuda")
        return self._val_loader

    def evaluate(self, session, model):
        loader = self.val_loader(session)
        if loader is None:
            return None
        return evaluate(model, loader, len(self.class_names), session.device, self.bundle.predict, session.amp,
                        session.dist)

    def eval_line(self, m: dict) -> str:
        text = f"held-out top-1 {m['top1']:.2f}% top-5 {m['top5']:.2f}% loss {m['loss']:.4f}"
        if "ema_top1" in m:
            text += f" | EMA top-1 {m['ema_top1']:.2f}%"
        if m.get("skipped"):
            text += f" | {m['skipped']} unreadable images skipped"
        return text

    def finish(self, session, last_eval):
        from vitlab.engine.plots import plot_confusion
        out, r = session.out, self.resolved
        crop = session.cfg["aug"]["crop_pct"] or self.model.pretrained_cfg.get("crop_pct")
        size = tuple(self.model.pretrained_cfg.get("input_size", ()))
        self.model.pretrained_cfg = {**self.model.pretrained_cfg, "mean": tuple(r["mean"]), "std": tuple(r["std"]),
                                     "crop_pct": crop, "interpolation": session.cfg["aug"]["interpolation"],
                                     "input_size": (r["in_chans"], *size[1:-2], r["img_size"], r["img_size"])}
        self.model.save_pretrained(out / "model", label_names=self.class_names)   # with the run's preprocessing
        summary = {"model": session.cfg["model"]["name"], "data": session.cfg["data"]["name"]}
        if last_eval:
            summary.update({k: last_eval.get(k) for k in ("top1", "top5", "loss", "count", "per_class", "confusion")})
            if "ema_top1" in last_eval:
                summary["ema_top1"] = last_eval["ema_top1"]
            summary["class_names"] = self.class_names
            if session.cfg["run"]["plots"] and last_eval.get("confusion") is not None:
                plot_confusion(np.array(last_eval["confusion"]), self.class_names, out / "confusion.png",
                               f"{session.cfg['model']['name']} on {session.cfg['data']['name']} ({out.name}): "
                               f"held-out top-1 {last_eval['top1']:.2f}%")
        return summary

    def summary_line(self, s: dict) -> str:
        if s.get("top1") is None:
            return f"done -> {s['output']}"
        return (f"held-out top-1: {s['top1']:.2f}%  top-5: {s['top5']:.2f}%  ({s['count']} images, "
                f"step {s['step']})  -> {s['output']}")

"""EsViT / DINO self-supervised pretraining (Li et al., arXiv 2106.09785; Caron et al., arXiv 2104.14294).

Build: the images of ``data.name`` (labels, where they exist, are used only by the online k-NN),
streamed and decoded lazily by the DataLoader; every sample's multi-crop views are taken from the
original image with the sample's own seed (:class:`~vitlab.data.multicrop.MultiCropTransform`) and
their photometric augmentation runs batched on the device. A student (backbone + DINO view head
+ region head) and an EMA teacher. Step: the teacher sees the two global crops, the student all
crops; the loss is L_V (+ L_R) with centring or Sinkhorn targets (:class:`~vitlab.ssl.esvit.EsViTLoss`).
Around the optimizer step: the last layer of the heads stays frozen for ``esvit.freeze_last_layer``
epochs, and the teacher follows the student with a momentum that rises on a cosine to
``esvit.momentum_teacher_end``. DINO's optimisation (lr per 256 images, weight decay 0.04 -> 0.4,
per-parameter gradient clipping, biases and norms without decay) comes from the shared sections.
Evaluate: k-NN of the teacher's pooled features, bank = the training split, queries = the held-out
split (``train/`` + ``val/`` for folders). Finish: ``model/`` holds the teacher backbone
(``from_pretrained`` / ``--pretrained`` / ``vitlab knn`` read it), and two figures.
The checkpoint keeps the teacher under ``teacher`` and the loss centres under ``dino_loss``, the keys
EsViT's and DINO's evaluation scripts read.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from vitlab.engine.schedule import cosine_value
from vitlab.engine.schema import PAIR, F
from vitlab.engine.task import Task
from vitlab.errors import ConfigError, DataError

# esvit.loss -> (weight of L_V, weight of L_R); EsViT's released code uses 0.5 / 0.5
LOSS_WEIGHTS = {"view": (1.0, 0.0), "view+region": (0.5, 0.5), "region": (0.0, 1.0)}

ESVIT_SECTION = {
    "loss": F("view+region", "str", choices=tuple(LOSS_WEIGHTS),
              doc="L_V alone (DINO), 0.5 L_V + 0.5 L_R (EsViT) or L_R alone (an ablation)"),
    "out_dim": F(65536, "int", low=1, doc="DINO head output dimension K"),
    "head_hidden_dim": F(2048, "int", low=1), "head_bottleneck_dim": F(256, "int", low=1),
    "norm_last_layer": F(True, "bool"), "use_bn_in_head": F(False, "bool"),
    "warmup_teacher_temp": F(0.04, "float", low=0.0), "teacher_temp": F(0.07, "float", low=0.0),
    "warmup_teacher_temp_epochs": F(0, "int", low=0), "student_temp": F(0.1, "float", low=0.0),
    "center_momentum": F(0.9, "float", low=0.0, high=1.0),
    "centering": F("ema", "str", choices=("ema", "sinkhorn"), doc="ema (DINO / EsViT) or sinkhorn (SwAV / DINOv2)"),
    "momentum_teacher": F(0.996, "float", low=0.0, high=1.0),
    "momentum_teacher_end": F(1.0, "float", low=0.0, high=1.0),
    "freeze_last_layer": F(1, "int", low=0, doc="epochs with the heads' last layer frozen"),
    "global_size": F(224, "int", low=1), "local_size": F(96, "int", low=1), "n_local": F(8, "int", low=0),
    "global_scale": F([0.4, 1.0], low=0.0, high=1.0, **PAIR), "local_scale": F([0.05, 0.4], low=0.0, high=1.0, **PAIR),
    "knn_k": F(20, "int", low=1), "knn_temperature": F(0.07, "float", low=0.0),
    "eval_crop_pct": F(0.875, "float", low=0.0, high=2.0, doc="k-NN view: resize to size / crop_pct, centre crop"),
    "figures": F(True, "bool", doc="region-match and attention PNGs at the end"),
}


class MultiCropForward(nn.Module):
    """``forward(crops)`` = :func:`~vitlab.ssl.esvit.multicrop_forward` of the student (so DDP sees it)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, crops):
        from vitlab.ssl.esvit import multicrop_forward
        return multicrop_forward(self.network, crops)


def _float(out):
    return tuple(t.float() if torch.is_tensor(t) else t for t in out)


class PretrainingTask(Task):
    name = "pretraining"
    help = "EsViT / DINO self-supervised pretraining (view + region loss), online k-NN"
    sections = {"esvit": ESVIT_SECTION}
    defaults = {
        "model": {"name": "swin_micro", "drop_path": 0.1},
        "data": {"name": "animal-mnist", "batch_size": 64},
        "optim": {"lr": 5e-4, "lr_base_batch": 256, "weight_decay": 0.04, "clip_grad": 3.0, "clip_mode": "per_param",
                  "no_decay_from_model": False},
        "sched": {"epochs": 10, "warmup_epochs": 1.0, "warmup_lr": 0.0, "min_lr": 1e-6, "weight_decay_end": 0.4},
        "run": {"log_every": 50},
    }
    monitor = "knn_top1"

    # --- building --------------------------------------------------------------------------------
    def _data(self, cfg: dict) -> None:
        from vitlab.data.multicrop import MultiCropConfig, MultiCropTransform
        from vitlab.data.registry import DataRequest, build_dataset, parse_data_spec
        from vitlab.data.transforms import build_eval_transform, match_channels
        from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD
        e = cfg["esvit"]
        name, root = parse_data_spec(cfg["data"]["name"])
        bundle = build_dataset(DataRequest(name=name, root=root or cfg["data"]["root"], seed=cfg["run"]["seed"],
                                           input_size=(3, e["global_size"], e["global_size"]),
                                           options=dict(cfg["data"]["options"])))
        if bundle.train is None or len(bundle.train) == 0:
            raise DataError(f"dataset {cfg['data']['name']!r} has no training images")
        self.in_chans = int(cfg["model"]["kwargs"].get("in_chans") or bundle.in_chans or 3)
        self.mean = match_channels(bundle.mean or IMAGENET_MEAN, self.in_chans)   # a built-in set's own statistics
        self.std = match_channels(bundle.std or IMAGENET_STD, self.in_chans)
        crop_cfg = MultiCropConfig(global_size=e["global_size"], local_size=e["local_size"], n_local=e["n_local"],
                                   global_scale=tuple(e["global_scale"]), local_scale=tuple(e["local_scale"]))
        self.crop_cfg, self.eval_crop_pct = crop_cfg, e["eval_crop_pct"]
        self.train_set = bundle.train
        self.train_set.transform = MultiCropTransform(crop_cfg, self.in_chans)
        eval_t = build_eval_transform({"input_size": (self.in_chans, e["global_size"], e["global_size"]),
                                       "crop_pct": e["eval_crop_pct"], "interpolation": "bicubic"},
                                      self.in_chans, self.mean, self.std)
        self.bank_set = self.query_set = None
        if bundle.labelled and bundle.val is not None and len(bundle.val):
            self.bank_set = copy.copy(bundle.train)
            self.bank_set.transform = eval_t
            self.query_set = bundle.val
            self.query_set.transform = eval_t
        self.class_names = list(bundle.class_names)
        self.info = {"dataset": cfg["data"]["name"], "train": len(bundle.train), "labelled": bundle.labelled,
                     "knn_queries": len(self.query_set) if self.query_set is not None else 0,
                     **{k: v for k, v in bundle.info.items() if isinstance(v, (int, float, str))}}

    def _networks(self, cfg: dict, device) -> None:
        import vitlab
        from vitlab.models.registry import with_any_input_size
        from vitlab.ssl.esvit import EsViTLoss, build_esvit_network
        e, m = cfg["esvit"], cfg["model"]
        kwargs = {**m["kwargs"], "num_classes": 0, "in_chans": self.in_chans, "img_size": e["global_size"]}
        if e["n_local"] and e["local_size"] != e["global_size"]:
            kwargs = with_any_input_size(m["name"], kwargs)        # local crops are smaller than img_size
        heads = dict(out_dim=e["out_dim"], hidden_dim=e["head_hidden_dim"], bottleneck_dim=e["head_bottleneck_dim"],
                     use_bn=e["use_bn_in_head"], dense_head=LOSS_WEIGHTS[e["loss"]][1] > 0)
        self.backbone_kwargs = kwargs
        drop = m["drop_path"] if m["drop_path"] is not None else 0.0
        self.model = build_esvit_network(vitlab.create_model(m["name"], drop_path_rate=drop, **kwargs),
                                         norm_last_layer=e["norm_last_layer"], **heads)
        self.teacher = build_esvit_network(vitlab.create_model(m["name"], drop_path_rate=0.0, **kwargs),
                                           norm_last_layer=True, **heads)
        self.teacher.load_state_dict(self.model.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.teacher.to(device).train()       # as in DINO: BatchNorm in a head uses batch statistics
        ncrops = 2 + e["n_local"]
        self.criterion = EsViTLoss(e["out_dim"], ncrops, e["warmup_teacher_temp"], e["teacher_temp"],
                                   e["warmup_teacher_temp_epochs"], cfg["sched"]["epochs"], e["student_temp"],
                                   e["center_momentum"], view_weight=LOSS_WEIGHTS[e["loss"]][0],
                                   region_weight=LOSS_WEIGHTS[e["loss"]][1],
                                   centering=e["centering"]).to(device)

    def build(self, session) -> None:
        cfg = session.cfg
        if cfg["ema"]["enabled"]:
            raise ConfigError("ema.enabled: pretraining has its own EMA (the teacher, esvit.momentum_teacher)")
        self._data(cfg)
        self._networks(cfg, session.device)

    def train_module(self) -> nn.Module:
        return MultiCropForward(self.model)

    def describe(self, session) -> str:
        e = session.cfg["esvit"]
        n = sum(p.numel() for p in self.model.parameters())
        knn = f", k-NN on {self.info['knn_queries']} held-out images" if self.query_set is not None else ", no labels"
        return (f"model {session.cfg['model']['name']} + DINO heads (K={e['out_dim']}): {n / 1e6:.3f}M params; loss "
                f"{e['loss']}; crops 2 x {e['global_size']} + {e['n_local']} x {e['local_size']} px from "
                f"{self.info['train']} images of {session.cfg['data']['name']}{knn}")

    # --- stepping ----------------------------------------------------------------------------------
    def train_step(self, module, batch, session):
        from vitlab.data.multicrop import multicrop_batch
        from vitlab.ssl.esvit import multicrop_forward
        views = multicrop_batch(batch[0], self.mean, self.std, session.device, self.in_chans)
        with torch.no_grad():
            teacher_out = multicrop_forward(self.teacher, views[:2])
        student_out = module(views)
        loss = self.criterion(_float(student_out), _float(teacher_out), session.pos.epoch, update_center=False)
        return loss, {k: v for k, v in self.criterion.last.items() if k != "teacher_entropy_max"}

    def batch_size_of(self, batch) -> int:
        return int(batch[0][0][0].shape[0])

    def after_backward(self, session) -> None:
        self.criterion.apply_pending()

    def before_optimizer_step(self, session) -> None:
        from vitlab.heads.dino import cancel_last_layer_gradients
        if session.pos.epoch < session.cfg["esvit"]["freeze_last_layer"]:
            cancel_last_layer_gradients(self.model)

    def after_optimizer_step(self, session) -> None:
        from vitlab.ssl.esvit import ema_update
        e = session.cfg["esvit"]
        momentum = cosine_value(session.pos.step, session.total_steps, e["momentum_teacher"], e["momentum_teacher_end"])
        ema_update(self.teacher, self.model, momentum)

    # --- evaluating and finishing ------------------------------------------------------------------
    def evaluate(self, session, model):
        """k-NN of the *teacher* (EsViT's evaluation); None without labels."""
        from vitlab.ssl.knn import knn_evaluate
        if self.query_set is None:
            return None
        e = session.cfg["esvit"]
        res = knn_evaluate(self.teacher, self.bank_set, self.query_set, k=e["knn_k"], temperature=e["knn_temperature"],
                           device=session.device, dist=session.dist, batch_size=session.cfg["data"]["eval_batch_size"],
                           workers=session.cfg["data"]["workers"], amp=session.amp, num_classes=len(self.class_names))
        self.teacher.train()
        return {f"knn_{k}": v for k, v in res.items()}

    def eval_line(self, m: dict) -> str:
        top5 = f" top-5 {m['knn_top5']:.2f}%" if "knn_top5" in m else ""
        return f"teacher k-NN top-1 {m['knn_top1']:.2f}%{top5} (k={m['knn_k']}, {m['knn_queries']} queries)"

    def teacher_backbone(self, session) -> nn.Module:
        """The teacher without its DINO heads, as a plain backbone with the run's preprocessing."""
        import vitlab
        backbone = vitlab.create_model(session.cfg["model"]["name"], **self.backbone_kwargs)
        state = {k: v for k, v in self.teacher.state_dict().items() if not k.startswith(("head.", "head_dense."))}
        backbone.load_state_dict(state)   # every backbone key, nothing else
        size = session.cfg["esvit"]["global_size"]
        backbone.pretrained_cfg = {**backbone.pretrained_cfg, "mean": tuple(self.mean), "std": tuple(self.std),
                                   "crop_pct": self.eval_crop_pct, "input_size": (self.in_chans, size, size)}
        return backbone.eval()

    def finish(self, session, last_eval):
        out = session.out
        backbone = self.teacher_backbone(session)
        backbone.save_pretrained(out / "model", dataset={"pretraining": session.cfg["data"]["name"]})
        if session.cfg["esvit"]["figures"]:
            self.figures(session, backbone)
        summary = {"model": session.cfg["model"]["name"], "data": session.cfg["data"]["name"]}
        if last_eval:
            summary.update({k: v for k, v in last_eval.items() if isinstance(v, (int, float))})
        return summary

    def figures(self, session, backbone) -> None:
        """Region matches between two views of one image (L_R runs), and the last block's attention (PNG)."""
        from vitlab.data.multicrop import MultiCropConfig, MultiCropTransform, apply_photometric
        from vitlab.ssl.visualize import attention_figure, region_correspondence_figure
        source = self.query_set if self.query_set is not None else self.train_set
        raw = copy.copy(source)
        raw.transform = MultiCropTransform(MultiCropConfig(**{**self.crop_cfg.__dict__, "n_local": 0}), self.in_chans)
        item = raw[(0, session.cfg["run"]["seed"])]
        (crops, params), _ = item
        views = [apply_photometric(c[None], {k: v[None] for k, v in p.items()}, self.mean, self.std, self.in_chans)
                 for c, p in zip(crops, params)]
        folder, name = session.out / "figures", f"{session.cfg['model']['name']} ({session.out.name})"
        if LOSS_WEIGHTS[session.cfg["esvit"]["loss"]][1] > 0:   # the matches L_R trained on; a view-only run has none
            region_correspondence_figure(backbone, views[0], views[1], folder / "region_matches.png", self.mean,
                                         self.std, title=name, geometry=params)
        if hasattr(backbone, "last_attention"):
            whole = self.query_set[0][0][None] if self.query_set is not None else views[0]
            attention_figure(backbone, whole, folder / "attention.png", self.mean, self.std, title=name)

    def summary_line(self, s: dict) -> str:
        if "knn_top1" not in s:
            return f"done -> {s['output']} (no labels: no k-NN)"
        return f"teacher k-NN top-1 {s['knn_top1']:.2f}%  -> {s['output']} (model/ = the teacher backbone)"

    # --- checkpoint state ------------------------------------------------------------------------
    def state_dict(self) -> dict:
        e = self.crop_cfg
        return {"teacher": self.teacher.state_dict(), "dino_loss": self.criterion.state_dict(),
                "esvit_data": {"mean": list(self.mean), "std": list(self.std), "in_chans": self.in_chans,
                               "global_size": e.global_size, "eval_crop_pct": self.eval_crop_pct}}

    def load_state_dict(self, state: dict) -> None:
        self.teacher.load_state_dict(state["teacher"])
        self.criterion.load_state_dict(state["dino_loss"])

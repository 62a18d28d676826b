"""EsViT fixture: Swin backbone + DINO view/region heads (multi-crop forward) and the DDINOLoss."""
import torch

import vitlab
from vitlab.heads.dino import DINOHead
from vitlab.ssl.esvit import EsViTLoss, multicrop_forward

FAMILIES = ("esvit",)


def _outputs(prefix, out):
    cls, dense, feats, npatch = out
    return {f"{prefix}_cls_logits": cls, f"{prefix}_dense_logits": dense, f"{prefix}_dense_feats": feats,
            f"{prefix}_npatch": torch.tensor(npatch, dtype=torch.int64)}


def run(fixture, config, weights, io):
    kw = config["kwargs"]
    model = vitlab.create_model("swin", **kw["backbone"])
    model.head = DINOHead(**kw["head"])
    model.head_dense = DINOHead(**kw["head_dense"])
    vitlab.load_checkpoint(model, weights, strict=True)
    model.eval()
    crops = config["crops"]
    globals_ = [io[f"global_crop_{i}"] for i in range(crops["n_global"])]
    locals_ = [io[f"local_crop_{i}"] for i in range(crops["n_local"])]
    teacher = multicrop_forward(model, globals_)
    student = multicrop_forward(model, globals_ + locals_)
    out = {**_outputs("teacher", teacher), **_outputs("student", student)}

    def loss_at(epoch):
        crit = EsViTLoss(**config["loss"]["kwargs"])
        crit.center.copy_(io["center_in"])
        crit.center_grid.copy_(io["center_grid_in"])
        return crit(student, teacher, epoch), crit

    out["loss"], crit = loss_at(config["loss"]["epoch"])
    out["center"], out["center_grid"] = crit.center.clone(), crit.center_grid.clone()
    out["loss_epoch0"], _ = loss_at(0)
    return out

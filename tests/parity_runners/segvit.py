"""SegViT fixtures: ATM / TPN-ATM heads in eval and (dropout-off) train mode, and the ATM loss."""
from vitlab.heads.atm_decoder import ATMHead
from vitlab.heads.tpn import TPNATMHead
from vitlab.segmentation.losses import ATMLoss
import vitlab

FAMILIES = ("segvit_atm", "segvit_tpn")


def run(fixture, config, weights, io):
    head_cls = ATMHead if config["family"] == "segvit_atm" else TPNATMHead
    head = head_cls(**config["kwargs"]).eval()
    vitlab.load_checkpoint(head, weights, strict=True)
    feats = [io[f"feat_{i}"] for i in range(config["n_feats"])]
    out = {"seg": head(feats)}
    head.training = True  # the head's own flag only: dropout stays off, as when the fixture was made
    if hasattr(head, "atm"):
        head.atm.training = True
    train = head(feats)
    out["pred_logits"], out["pred_masks"] = train["pred_logits"], train["pred_masks"]
    for i, aux in enumerate(train["aux_outputs"]):
        out[f"aux_{i}_pred_logits"], out[f"aux_{i}_pred_masks"] = aux["pred_logits"], aux["pred_masks"]
    losses = ATMLoss(**config["loss"]["kwargs"])(train, io["label"], ignore_index=config["loss"]["ignore_index"])
    out.update(losses)
    out["loss_total"] = sum(losses.values())
    return out

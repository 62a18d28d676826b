"""VOLO fixtures: ``logits`` (return_dense=True) and ``logits_cls`` (class-token head only)."""
import vitlab

FAMILIES = ("volo",)


def run(fixture, config, weights, io):
    model = vitlab.create_model("volo", **config["kwargs"]).eval()
    vitlab.load_checkpoint(model, weights, strict=True)
    return {"logits": model(io["x"]), "logits_cls": model.forward_train(io["x"]).logits}

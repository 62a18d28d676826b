"""VOLO fixtures: ``logits`` (return_dense=True) and ``logits_cls`` (class-token head only)."""
import vitlab

FAMILIES = ("volo",)


def run(fixture, config, weights, io):
    model = vitlab.create_model("volo", **config["kwargs"]).eval()
    vitlab.load_checkpoint(model, weights, strict=True)
    logits = model(io["x"])
    model.return_dense = False
    return {"logits": logits, "logits_cls": model(io["x"])}

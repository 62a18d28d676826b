"""UniFormer fixtures: image (plain and token-labeling files) and video (yacs cfg -> keyword arguments)."""
import vitlab

FAMILIES = ("uniformer_image", "uniformer_video")

# the video model's yacs config, mapped one to one onto the family's keyword arguments
VIDEO_CFG_KEYS = {
    ("UNIFORMER", "DEPTH"): "depth", ("UNIFORMER", "EMBED_DIM"): "embed_dim", ("UNIFORMER", "HEAD_DIM"): "head_dim",
    ("UNIFORMER", "MLP_RATIO"): "mlp_ratio", ("UNIFORMER", "QKV_BIAS"): "qkv_bias",
    ("UNIFORMER", "QKV_SCALE"): "qk_scale", ("UNIFORMER", "REPRESENTATION_SIZE"): "representation_size",
    ("UNIFORMER", "DROPOUT_RATE"): "drop_rate", ("UNIFORMER", "ATTENTION_DROPOUT_RATE"): "attn_drop_rate",
    ("UNIFORMER", "DROP_DEPTH_RATE"): "drop_path_rate", ("UNIFORMER", "SPLIT"): "split", ("UNIFORMER", "STD"): "std",
    ("MODEL", "NUM_CLASSES"): "num_classes", ("MODEL", "USE_CHECKPOINT"): "use_checkpoint",
    ("DATA", "TRAIN_CROP_SIZE"): "img_size",
}


def video_kwargs(cfg: dict) -> dict:
    kwargs = {arg: cfg[sec][key] for (sec, key), arg in VIDEO_CFG_KEYS.items() if key in cfg.get(sec, {})}
    kwargs["in_chans"] = cfg["DATA"]["INPUT_CHANNEL_NUM"][0]
    return kwargs


def run(fixture, config, weights, io):
    if config["family"] == "uniformer_video":
        model = vitlab.create_model("uniformer_video", **video_kwargs(config["kwargs"]["cfg"])).eval()
        vitlab.load_checkpoint(model, weights, strict=True)
        return {"logits": model([io["x"]])}
    extra = dict(config.get("module_globals", {}))
    if config.get("module_file") == "token_labeling":
        extra["token_labeling"] = True
    model = vitlab.create_model("uniformer_image", **config["kwargs"], **extra).eval()
    vitlab.load_checkpoint(model, weights, strict=True)
    out = {"logits": model(io["x"])}
    if "logits_cls" in config["outputs"]:
        out["logits_cls"] = model.forward_train(io["x"]).logits  # the class head alone
    return out

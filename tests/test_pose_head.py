"""The heatmap head and the top-down model have mmpose's parameter layout (so official checkpoints load)."""
import pytest
import torch

from vitlab.heads.pose_heatmap import TopdownHeatmapSimpleHead
from vitlab.pose.topdown import UNIFORMER_POSE_CONFIGS, TopDownPose, build_topdown


def _mmpose_layout(in_channels, out_channels=17, filters=(256, 256, 256), kernel=4, final=1):
    """mmpose's TopdownHeatmapSimpleHead state dict: deconv_layers = [deconv, BN, ReLU] x n (Sequential
    indices 3i, 3i+1, 3i+2; ConvTranspose2d(bias=False) weights are (in, out, k, k)), then final_layer (a Conv2d)."""
    keys, c = {}, in_channels
    for i, f in enumerate(filters):
        keys[f"deconv_layers.{3 * i}.weight"] = (c, f, kernel, kernel)
        for name in ("weight", "bias", "running_mean", "running_var"):
            keys[f"deconv_layers.{3 * i + 1}.{name}"] = (f,)
        keys[f"deconv_layers.{3 * i + 1}.num_batches_tracked"] = ()
        c = f
    keys["final_layer.weight"] = (out_channels, c, final, final)
    keys["final_layer.bias"] = (out_channels,)
    return keys


def test_head_parameter_names_and_shapes_are_mmposes():
    head = TopdownHeatmapSimpleHead(512, 17)
    got = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert got == _mmpose_layout(512)
    assert [n for n, _ in head.named_parameters()] == [
        "deconv_layers.0.weight", "deconv_layers.1.weight", "deconv_layers.1.bias",
        "deconv_layers.3.weight", "deconv_layers.4.weight", "deconv_layers.4.bias",
        "deconv_layers.6.weight", "deconv_layers.7.weight", "deconv_layers.7.bias",
        "final_layer.weight", "final_layer.bias"]
    assert head.deconv_layers[0].bias is None and isinstance(head.deconv_layers[2], torch.nn.ReLU)


def test_head_upsamples_8x_and_initialises_like_mmpose():
    torch.manual_seed(0)
    head = TopdownHeatmapSimpleHead(64, 17).eval()
    assert head(torch.randn(2, 64, 8, 6)).shape == (2, 17, 64, 48)
    assert head([torch.randn(1, 32, 4, 4), torch.randn(1, 64, 8, 6)]).shape == (1, 17, 64, 48)  # reads the last map
    assert float(head.deconv_layers[0].weight.detach().std()) == pytest.approx(0.001, rel=0.05)
    assert float(head.final_layer.weight.detach().std()) == pytest.approx(0.001, rel=0.2)
    assert float(head.final_layer.bias.detach().abs().max()) == 0.0
    assert float(head.deconv_layers[1].weight.detach().min()) == 1.0


def test_head_options_and_errors():
    assert TopdownHeatmapSimpleHead(32, 5, 2, (16, 16), (3, 2), final_conv_kernel=3)(
        torch.randn(1, 32, 5, 7)).shape == (1, 5, 20, 28)
    assert isinstance(TopdownHeatmapSimpleHead(17, 17, 0, (), (), final_conv_kernel=0).final_layer, torch.nn.Identity)
    with pytest.raises(ValueError, match="needs as many filters"):
        TopdownHeatmapSimpleHead(32, 17, 3, (256, 256), (4, 4))
    with pytest.raises(ValueError, match="final_conv_kernel"):
        TopdownHeatmapSimpleHead(32, 17, final_conv_kernel=5)
    with pytest.raises(ValueError, match=r"expects \(B, 32, h, w\)"):
        TopdownHeatmapSimpleHead(32, 17)(torch.randn(1, 16, 4, 4))


def test_official_uniformer_small_pose_layout():
    """``TopDown(backbone=UniFormer(...), keypoint_head=TopDownSimpleHead(in_channels=512))`` of the official
    256x192 config: backbone.* are the dense UniFormer's (per-stage norms, no classifier), keypoint_head.* mmpose's."""
    cfg = UNIFORMER_POSE_CONFIGS["uniformer_small_pose_256x192"]
    model = build_topdown(cfg["backbone"], cfg["backbone_kwargs"])
    sd = model.state_dict()
    head = {k[len("keypoint_head."):]: tuple(v.shape) for k, v in sd.items() if k.startswith("keypoint_head.")}
    assert head == _mmpose_layout(512)
    backbone = {k for k in sd if k.startswith("backbone.")}
    assert backbone and len(backbone) + len(head) == len(sd)
    for key in ("backbone.patch_embed1.proj.weight", "backbone.patch_embed1.norm.weight",
                "backbone.blocks3.7.attn.qkv.weight", "backbone.norm1.weight", "backbone.norm4.bias"):
        assert key in sd, key
    assert not any(k.startswith(("backbone.head.", "backbone.norm.")) for k in sd)
    assert sum(1 for k in backbone if k.startswith("backbone.blocks")) > 0
    assert model.backbone.feature_info[-1] == {"channels": 512, "reduction": 32, "module": "norm4"}
    # an mmpose-style checkpoint (the model's own keys) loads strictly
    assert not model.load_state_dict({k: v.clone() for k, v in sd.items()}, strict=True).missing_keys


def test_build_topdown_picks_deconvs_from_the_stride_and_names_the_parts():
    model = build_topdown("uniformer_micro", dict(dense=True))
    assert isinstance(model, TopDownPose) and model.backbone_name == "uniformer_micro"
    assert {n.split(".")[0] for n, _ in model.named_parameters()} == {"backbone", "keypoint_head"}
    assert len([m for m in model.keypoint_head.deconv_layers if isinstance(m, torch.nn.ConvTranspose2d)]) == 3
    assert model.pretrained_cfg["input_size"] == (3, 256, 192) and model.pretrained_cfg["task"] == "pose"
    assert model.eval()(torch.randn(1, 3, 256, 192)).shape == (1, 17, 64, 48)

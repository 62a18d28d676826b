"""Video UniFormer: official manifests, clip input handling, divided attention, 2-D -> 3-D inflation."""
import json

import pytest
import torch
import torch.nn.functional as F

import vitlab
from conftest import manifest_path
from vitlab.models.registry import get_entry
from vitlab.models.uniformer_video import inflate_2d_weight


def _meta(name, **kwargs):
    with torch.device("meta"):
        return vitlab.create_model(name, **kwargs)


@pytest.mark.parametrize("variant", ["uniformer_video_small", "uniformer_video_base"])
def test_video_variant_matches_official_manifest(require_fixtures, variant):
    spec = json.loads(manifest_path(variant).read_text())
    model = _meta(variant)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(spec["state_dict"])
    assert all(shapes[k] == list(v) for k, v in spec["state_dict"].items())
    params = sum(p.numel() for p in model.parameters())
    assert abs(params - spec["params"]) <= 1e-3 * spec["params"]
    assert get_entry(variant).family == "uniformer_video"


def test_tensor_and_list_input_agree_and_any_frame_count():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_video_micro", num_classes=6).eval()
    clip = torch.randn(2, 3, 8, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(clip), model([clip]))
        assert model(torch.randn(1, 3, 5, 64, 96)).shape == (1, 6)  # odd T, non-square frames
        feats = model.forward_intermediates(clip)
    assert [tuple(f.shape) for f in feats] == [(2, 16, 4, 16, 16), (2, 32, 4, 8, 8), (2, 64, 4, 4, 4),
                                               (2, 96, 4, 2, 2)]
    assert model.pretrained_cfg["input_size"] == (3, 8, 64, 64)


def test_forward_features_layout_and_forward_train():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_video_micro", num_classes=6).eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, 7, 64, 96)).shape == (1, 96, 4, 2, 3)  # ceil(7 / 2)
        clip = torch.randn(2, 3, 8, 64, 64)
        out = model.forward_train(clip)
        assert out.aux_logits is None and out.mix_box is None
        torch.testing.assert_close(out.logits, model(clip))


def test_video_input_errors():
    model = vitlab.create_model("uniformer_video_micro").eval()
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        model(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="one-element list"):
        model([torch.randn(1, 3, 4, 64, 64)] * 2)
    with pytest.raises(ValueError, match="at least 32x32"):
        model(torch.randn(1, 3, 4, 16, 16))


def test_micro_trains_one_step():
    torch.manual_seed(0)
    model = vitlab.create_model("uniformer_video_micro", num_classes=3).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    clip, target = torch.randn(4, 3, 4, 32, 32), torch.tensor([0, 1, 2, 0])
    losses = []
    for _ in range(3):
        loss = F.cross_entropy(model(clip), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_divided_space_time_and_std_options():
    model = vitlab.create_model("uniformer_video_micro", split=True, std=True)
    keys = model.state_dict()
    assert "blocks3.0.t_attn.qkv.weight" in keys and "blocks4.0.t_norm.weight" in keys
    assert torch.count_nonzero(model.blocks3[0].t_attn.qkv.weight) == 0
    assert torch.all(model.blocks3[0].t_attn.proj.weight == 1)
    assert model.patch_embed2.proj.weight.shape == (32, 16, 3, 2, 2)
    assert model.eval()(torch.randn(1, 3, 4, 64, 64)).shape == (1, 10)


def test_inflated_kernel_reproduces_2d_conv_on_a_static_clip():
    torch.manual_seed(0)
    w2d, bias = torch.randn(8, 4, 3, 3), torch.randn(8)
    frame = torch.randn(2, 4, 9, 9)
    clip = frame[:, :, None].repeat(1, 1, 5, 1, 1)
    w3d = inflate_2d_weight(w2d, 3)
    assert w3d.shape == (8, 4, 3, 3, 3)
    out = F.conv3d(clip, w3d, bias, padding=(0, 1, 1))  # no temporal padding: every output frame is interior
    ref = F.conv2d(frame, w2d, bias, padding=1)
    for t in range(out.shape[2]):
        torch.testing.assert_close(out[:, :, t], ref, atol=1e-5, rtol=1e-5)


def test_load_image_checkpoint_into_video_model_inflates():
    torch.manual_seed(0)
    image = vitlab.create_model("uniformer_micro", depth=[1, 1, 1, 1], num_classes=1000)
    video = vitlab.create_model("uniformer_video_micro")
    head_before = video.head.weight.clone()
    report = vitlab.load_checkpoint(video, {"model": image.state_dict()}, strict=True)
    notes = "\n".join(report.notes)
    assert "inflated 18 2-D image weights to 3-D" in notes
    assert "patch_embed1.proj.weight (16, 3, 4, 4)->(16, 3, 3, 4, 4)" in notes
    assert "kept the freshly initialised head.weight, head.bias" in notes
    torch.testing.assert_close(video.patch_embed1.proj.weight, image.patch_embed1.proj.weight[:, :, None].repeat(
        1, 1, 3, 1, 1) / 3)
    torch.testing.assert_close(video.blocks1[0].attn.weight.sum(2), image.blocks1[0].attn.weight)
    torch.testing.assert_close(video.blocks3[0].attn.qkv.weight, image.blocks3[0].attn.qkv.weight)
    assert torch.equal(video.head.weight, head_before)
    # a video checkpoint (already 3-D) loads unchanged, without notes
    again = vitlab.load_checkpoint(vitlab.create_model("uniformer_video_micro"), video.state_dict())
    assert not again.notes


def test_image_checkpoint_into_divided_attention_model_keeps_temporal_init():
    image = vitlab.create_model("uniformer_micro", depth=[1, 1, 1, 1], num_classes=10)
    video = vitlab.create_model("uniformer_video_micro", split=True)
    report = vitlab.load_checkpoint(video, image.state_dict(), strict=True)
    assert any("12 temporal-attention keys" in n for n in report.notes)
    assert torch.count_nonzero(video.blocks3[0].t_attn.qkv.weight) == 0
    torch.testing.assert_close(video.blocks3[0].attn.qkv.weight, image.blocks3[0].attn.qkv.weight)

"""EsViT on every multi-stage family: one adapter turns each backbone's last map into region tokens."""
import pytest
import torch

import vitlab
from vitlab.models.registry import with_any_input_size
from vitlab.ssl.esvit import EsViTLoss, build_esvit_network, multicrop_forward
from vitlab.ssl.region_tokens import region_tokens, split_features, token_grid

FAMILIES = ["swin_micro", "pale_micro", "uniformer_micro", "volo_micro", "vit_micro"]


def _backbone(name, size=64):
    torch.manual_seed(0)
    return vitlab.create_model(name, **with_any_input_size(name, {"num_classes": 0, "img_size": size})).eval()


@pytest.mark.parametrize("name", FAMILIES)
def test_region_tokens_are_the_last_map_on_its_grid(name):
    model = _backbone(name)
    x = torch.randn(2, 3, 64, 64)
    pooled, tokens, (h, w) = split_features(model, x)
    stride = model.feature_info[-1]["reduction"]
    assert (h, w) == (-(-64 // stride),) * 2
    assert tokens.shape == (2, h * w, model.num_features) and pooled.shape == (2, model.num_features)
    feats = model.forward_features(x)
    if feats.ndim == 4:                                                   # Pale, UniFormer: NCHW
        torch.testing.assert_close(tokens[:, 1], feats[:, :, 0, 1])
    else:                                                                 # Swin: no class token; VOLO / ViT: one
        torch.testing.assert_close(tokens, feats[:, feats.shape[1] - h * w:])
    torch.testing.assert_close(pooled, model.forward_head(feats, pre_logits=True))


def test_token_grid_reads_class_tokens_and_refuses_what_is_no_grid():
    model = _backbone("volo_micro")
    assert token_grid(model, (64, 64), 17) == (4, 4, 1)
    with pytest.raises(ValueError, match="do not form a grid"):
        token_grid(model, (64, 64), 40)
    with pytest.raises(ValueError, match="3-D tensor|2-D tensor"):
        region_tokens(model, torch.randn(2, 8), (64, 64))


def test_swin_view_feature_is_still_the_token_mean():
    """The official EsViT layout (Swin): the view feature is the mean of the final tokens."""
    model = _backbone("swin_micro", 32)
    x = torch.randn(2, 3, 32, 32)
    pooled, tokens, _ = split_features(model, x)
    torch.testing.assert_close(pooled, tokens.mean(1))


@pytest.mark.parametrize("name", FAMILIES)
def test_one_region_loss_step_trains_every_family(name):
    net = build_esvit_network(_backbone(name).train(), out_dim=32, hidden_dim=16, bottleneck_dim=8)
    crops = [torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64), torch.randn(2, 3, 32, 32)]
    student = multicrop_forward(net, crops)
    with torch.no_grad():
        teacher = multicrop_forward(net, crops[:2])
    loss_fn = EsViTLoss(32, ncrops=3, warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0,
                        nepochs=1)
    loss = loss_fn(student, teacher, 0)
    loss.backward()
    assert torch.isfinite(loss) and "region" in loss_fn.last
    grads = [p.grad for p in net.head_dense.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.fixture(scope="module")
def tiny_scenes(tmp_path_factory):
    from vitlab.data.synthetic_scenes import write_texture_scenes
    return write_texture_scenes(tmp_path_factory.mktemp("scenes"), num_train=8, num_val=4, size=64, seed=0)


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "pale_micro" else pytest.mark.slow)
                                  for n in FAMILIES[:4]])
def test_pretrain_command_runs_on_every_family(name, tiny_scenes, tmp_path):
    """``vitlab pretrain --model NAME``: two steps with local crops, the teacher saved and k-NN scored."""
    import json

    from vitlab.cli.main import main
    out = tmp_path / "run"
    code = main(["pretrain", "--model", name, "--data", f"texture-scenes:{tiny_scenes}", "--batch-size", "4",
                 "--epochs", "1", "--max-steps", "2", "--threads", "1", "-o", str(out),
                 "--set", "esvit.global_size=64", "--set", "esvit.local_size=32", "--set", "esvit.n_local=1",
                 "--set", "esvit.out_dim=64", "--set", "esvit.head_hidden_dim=32", "--set", "esvit.head_bottleneck_dim=16"])
    assert code == 0
    final = json.loads((out / "final.json").read_text())
    assert final["step"] == 2 and 0 <= final["knn_top1"] <= 100
    assert (out / "figures" / "region_matches.png").is_file()
    assert vitlab.from_pretrained(out / "model").forward_features(torch.randn(1, 3, 64, 64)).shape[0] == 1

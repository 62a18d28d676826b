"""The timm calls on vitlab models: features_only / out_indices / feature_info, num_classes with a checkpoint
for another classifier, num_classes=0, global_pool, list_models(pretrained=True), resolve_data_config and
create_transform. All on the micro variants; the timm comparison runs only where timm imports."""
import logging
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from vitlab.checkpoints.load import CheckpointError
from vitlab.data.transforms import build_eval_transform

LIGHT_MICRO = dict(depth=[1, 1, 3, 2], conv_stem=True, embed_dim=[16, 32, 64, 96], head_dim=16, mlp_ratio=[3] * 4,
                   prune_ratio=[[], [], [1, 0.5, 0.5], [0.5, 0.5]], trade_off=[[], [], [1, 0.5, 0.5], [0.5, 0.5]],
                   img_size=64)
# (name, kwargs, input side) for one small model of every classification family
FAMILIES = [("volo_micro", {}, 64), ("pale_micro", {}, 64), ("uniformer_micro", {}, 64),
            ("uniformer_light", LIGHT_MICRO, 64), ("swin_micro", {}, 32), ("vit_micro", {}, 64)]


@pytest.mark.parametrize("name, kwargs, side", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_features_only_maps_match_feature_info(name, kwargs, side):
    model = vitlab.create_model(name, features_only=True, **kwargs).eval()
    info, own = model.feature_info, model.model.feature_info     # FeatureInfo, and the backbone's own list
    assert len(info) == len(own) and model.out_indices == tuple(range(len(own)))
    assert info.channels() == [e["channels"] for e in own] and info.reduction() == [e["reduction"] for e in own]
    assert info.module_name() == [e["module"] for e in own]
    assert not any(k.split(".")[1] in ("head", "aux_head", "head_cls") for k in model.state_dict())
    with torch.no_grad():
        maps = model(torch.randn(1, 3, side, side))
    assert [tuple(m.shape) for m in maps] == [(1, c, side // r, side // r)
                                               for c, r in zip(info.channels(), info.reduction())]


def test_feature_info_has_timms_accessors():
    model = vitlab.create_model("pale_micro", features_only=True, out_indices=2)
    info = model.feature_info
    assert info.out_indices == (2, 3) and info.channels() == [64, 128] and info.reduction() == [16, 32]
    assert info.channels(0) == 16 and info.reduction([0, 1]) == [4, 8] and info.module_name(3) == "stages.3"
    assert info[1] == {"channels": 32, "num_chs": 32, "reduction": 8, "module": "stages.1", "index": 1}
    assert len(info) == 4 and [d["index"] for d in info.get_dicts()] == [2, 3]
    assert info.get_dicts(keys=["num_chs", "reduction"]) == [{"num_chs": 64, "reduction": 16},
                                                            {"num_chs": 128, "reduction": 32}]
    assert "num_classes" not in model.pretrained_cfg and model.pretrained_cfg["input_size"] == (3, 64, 64)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        maps, first_last = model(x), vitlab.create_model("pale_micro", features_only=True, out_indices=(0, -1))(x)
    assert [m.shape[1] for m in maps] == [64, 128] and [m.shape[1] for m in first_last] == [16, 128]


def test_feature_index_errors_name_the_valid_range():
    with pytest.raises(ValueError, match=r"out_indices=\(0, 4\) for volo_micro: .*valid indices are 0\.\.3 "
                                         r"\(or -4\.\.-1"):
        vitlab.create_model("volo_micro", features_only=True, out_indices=(0, 4))
    with pytest.raises(ValueError, match="the model has 3: give 1..3"):
        vitlab.create_model("swin_micro", features_only=True, out_indices=5)
    with pytest.raises(ValueError, match="pass features_only=True"):
        vitlab.create_model("volo_micro", out_indices=(0,))
    with pytest.raises(ValueError, match="features_only is offered for the classification families"):
        vitlab.create_model("segvit_micro", features_only=True)


@pytest.fixture(scope="module")
def volo_checkpoint(tmp_path_factory):
    """A 1000-class volo_micro (class head and token-labeling aux head) saved as an official-style .pth."""
    torch.manual_seed(1)
    source = vitlab.create_model("volo_micro").eval()
    path = tmp_path_factory.mktemp("ckpt") / "volo_micro.pth"
    torch.save({"state_dict": source.state_dict()}, path)
    return source, path


def test_num_classes_reinitialises_the_head_and_loads_the_rest_strictly(volo_checkpoint, caplog):
    source, path = volo_checkpoint
    torch.manual_seed(3)
    fresh = vitlab.create_model("volo_micro", num_classes=5)
    torch.manual_seed(3)
    with caplog.at_level(logging.INFO, logger="vitlab.models.pretrained"):
        model = vitlab.create_model("volo_micro", pretrained=str(path), num_classes=5).eval()
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "1000 classes, the model 5: re-initialised" in lines[0]
    assert "head.weight, head.bias" in lines[0] and "aux_head.weight" in lines[0]
    heads = ("head", "aux_head")
    for key, value in model.state_dict().items():
        expected = (fresh if key.split(".")[0] in heads else source).state_dict()[key]
        assert torch.equal(value, expected), key
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_num_classes_with_a_backbone_only_checkpoint(volo_checkpoint, tmp_path, caplog):
    source, _ = volo_checkpoint
    backbone = {k: v for k, v in source.state_dict().items() if k.split(".")[0] not in ("head", "aux_head")}
    torch.save(backbone, tmp_path / "backbone.pth")
    with caplog.at_level(logging.WARNING, logger="vitlab.models.pretrained"):
        model = vitlab.create_model("volo_micro", pretrained=str(tmp_path / "backbone.pth"), num_classes=4)
    assert "the checkpoint has no classifier, the model 4: re-initialised" in caplog.text
    assert torch.equal(model.pos_embed, source.pos_embed)
    with pytest.raises(CheckpointError, match=r"missing keys \(4\): aux_head.weight, aux_head.bias, head"):
        vitlab.create_model("volo_micro", pretrained=str(tmp_path / "backbone.pth"))


def test_num_classes_zero_gives_a_pooled_backbone(volo_checkpoint, caplog):
    source, path = volo_checkpoint
    with caplog.at_level(logging.INFO, logger="vitlab.models.pretrained"):
        model = vitlab.create_model("volo_micro", pretrained=str(path), num_classes=0).eval()
    assert any("num_classes=0, left out the checkpoint's 1000-class classifier" in r.getMessage()
               for r in caplog.records)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, model.num_features)
        torch.testing.assert_close(out, model.forward_head(source.forward_features(x), pre_logits=True)
                                   + 0.5 * source.forward_features(x)[:, 1:].max(1).values)
    for name, kwargs, side in FAMILIES[1:]:
        backbone = vitlab.create_model(name, num_classes=0, **kwargs).eval()
        with torch.no_grad():
            assert backbone(torch.randn(1, 3, side, side)).shape == (1, backbone.num_features), name


def test_other_mismatches_still_fail_strictly(volo_checkpoint, tmp_path):
    _, path = volo_checkpoint
    torch.save(vitlab.create_model("volo_micro", num_classes=5).state_dict(), tmp_path / "five.pth")
    with pytest.raises(CheckpointError, match=r"(?s)five.pth does not fit.*5 classes.*num_classes=5"):
        vitlab.create_model("volo_micro", pretrained=str(tmp_path / "five.pth"))  # num_classes not asked for
    with pytest.raises(CheckpointError, match=r"(?s)volo_micro.pth does not fit.*wrong shapes.*network\.4"):
        vitlab.create_model("volo_micro", pretrained=str(path), num_classes=5, embed_dims=[32, 64, 64, 96])
    with pytest.raises(CheckpointError, match=r"unexpected keys \(2\): aux_head.weight, aux_head.bias"):
        vitlab.create_model("volo_micro", pretrained=str(path), num_classes=5, return_dense=False)


def test_features_only_loads_a_classification_checkpoint(volo_checkpoint, tmp_path):
    source, path = volo_checkpoint
    model = vitlab.create_model("volo_micro", pretrained=str(path), features_only=True, out_indices=[-1]).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], source.forward_intermediates(x, [-1])[0])
    report = vitlab.load_checkpoint(model, path)
    assert any("features_only model has none" in n for n in report.notes)
    vitlab.save_pretrained(model, tmp_path / "features")
    again = vitlab.from_pretrained(tmp_path / "features")
    assert again.out_indices == (3,)
    with torch.no_grad():
        assert torch.equal(again(x)[0], model(x)[0])


def test_global_pool_per_family():
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        vit = vitlab.create_model("vit_micro", num_classes=0, global_pool="").eval()
        assert vit(x).shape == (2, 17, 64)                              # class token + 4x4 patch tokens
        assert vitlab.create_model("vit_micro", global_pool="").eval()(x).shape == (2, 17, 10)
        assert vitlab.create_model("vit_micro", global_pool="avg").global_pool == "avg"
        volo = vitlab.create_model("volo_micro", num_classes=0, global_pool="").eval()
        feats = volo.forward_features(x)
        assert torch.equal(volo(x), feats) and torch.equal(volo.forward_head(feats, pre_logits=True), feats)
        avg = vitlab.create_model("volo_micro", num_classes=3, global_pool="avg").eval()
        torch.testing.assert_close(avg.forward_head(feats, pre_logits=True), feats.mean(1))
        assert avg(x).shape == (2, 3)
        assert vitlab.create_model("volo_micro", num_classes=3, global_pool="").eval()(x).shape == (2, 17, 3)
        for name, kwargs, side in FAMILIES[1:5]:
            model = vitlab.create_model(name, num_classes=0, global_pool="", **kwargs).eval()
            y = torch.randn(1, 3, side, side)
            assert torch.equal(model(y), model.forward_features(y)), name
    assert vitlab.create_model("pale_micro", num_classes=0, global_pool="")(torch.randn(1, 3, 64, 64)).ndim == 4
    with pytest.raises(ValueError, match="global_pool='' leaves no pooled vector.*num_classes=0"):
        vitlab.create_model("pale_micro", global_pool="")
    with pytest.raises(ValueError, match="pale_micro: global_pool must be one of 'avg', '', got 'token'"):
        vitlab.create_model("pale_micro", global_pool="token")
    with pytest.raises(ValueError, match="vit_micro: global_pool must be one of 'token', 'avg', '', got 'max'"):
        vitlab.create_model("vit_micro", global_pool="max")
    with pytest.raises(ValueError, match="global_pool is not an option of segvit models"):
        vitlab.create_model("segvit_micro", global_pool="avg")


def test_list_models_pretrained_follows_the_weight_zoo(monkeypatch):
    zoo = types.ModuleType("vitlab.checkpoints.zoo")
    zoo.zoo_names = lambda: ["volo_d1.in1k", "volo_d1_384.in1k", "uniformer_small_tl.in1k"]
    monkeypatch.setitem(sys.modules, "vitlab.checkpoints.zoo", zoo)
    assert vitlab.list_models("volo_d1*", pretrained=True) == ["volo_d1", "volo_d1_384"]
    assert vitlab.list_models(pretrained=True) == ["uniformer_small_token_labeling", "volo_d1",  # alias resolved
                                                   "volo_d1_384"]
    assert "volo_d2" in vitlab.list_models("volo_d*")
    monkeypatch.setitem(sys.modules, "vitlab.checkpoints.zoo", None)   # the module not there (yet)
    assert vitlab.list_models("volo*", pretrained=True) == []


def _photo(h: int = 70, w: int = 90) -> Image.Image:
    return Image.fromarray((np.random.default_rng(0).random((h, w, 3)) * 255).astype("uint8"))


@pytest.mark.parametrize("name", ["volo_micro", "vit_micro"])
def test_data_config_and_transform_equal_vitlabs_eval_transform(name):
    model = vitlab.create_model(name)
    config = vitlab.resolve_data_config(model=model)
    cfg = model.pretrained_cfg
    assert config == {"input_size": cfg["input_size"], "interpolation": cfg["interpolation"], "mean": cfg["mean"],
                      "std": cfg["std"], "crop_pct": cfg["crop_pct"], "crop_mode": "center"}
    image = _photo()
    out = vitlab.create_transform(**config)(image)
    assert out.shape == cfg["input_size"] and torch.equal(out, build_eval_transform(cfg)(image))
    features = vitlab.create_model(name, features_only=True)
    assert vitlab.resolve_data_config(model=features) == config


def test_data_config_args_override_and_errors():
    model = vitlab.create_model("volo_micro")
    config = vitlab.resolve_data_config({"img_size": 96, "mean": [0.5], "crop_pct": 1.0}, model=model)
    assert config["input_size"] == (3, 96, 96) and config["mean"] == (0.5, 0.5, 0.5) and config["crop_pct"] == 1.0
    assert vitlab.resolve_model_data_config(model) == vitlab.resolve_data_config(model=model)
    assert vitlab.create_transform(**config)(_photo()).shape == (3, 96, 96)
    train = vitlab.create_transform(**config, is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    assert train(_photo(), torch.Generator().manual_seed(0)).shape == (3, 96, 96)
    with pytest.raises(ValueError, match="needs a model, a pretrained_cfg or args"):
        vitlab.resolve_data_config()
    with pytest.raises(ValueError, match="crop_mode='squash' is not offered"):
        vitlab.create_transform(64, crop_mode="squash")
    with pytest.raises(ValueError, match="use_prefetcher=True is a timm option"):
        vitlab.create_transform(64, use_prefetcher=True)


def test_data_config_and_feature_info_agree_with_timm(real_timm):
    timm = real_timm
    from timm.models._features import FeatureInfo as TimmFeatureInfo
    timm_cfg = timm.models.get_pretrained_cfg("volo_d1_224").to_dict()
    ours = vitlab.resolve_data_config(model=vitlab.models.registry.build_without_weights("volo_d1"))
    assert ours == timm.data.resolve_data_config(pretrained_cfg=timm_cfg)
    model = vitlab.create_model("pale_micro", features_only=True, out_indices=(1, 3))
    theirs = TimmFeatureInfo([dict(d) for d in model.feature_info.info], (1, 3))
    for accessor in ("channels", "reduction", "module_name"):
        assert getattr(model.feature_info, accessor)() == getattr(theirs, accessor)()
        assert getattr(model.feature_info, accessor)(0) == getattr(theirs, accessor)(0)
    assert model.feature_info.get_dicts(keys=["num_chs"]) == theirs.get_dicts(keys=["num_chs"])

"""timm interop: vitlab variants registered in timm's registry as ``vitlab_<name>``."""
import sys
import types

import pytest
import torch

import vitlab
from vitlab.integrations import timm as vitlab_timm


class StubRegistry:
    """timm's registry contract: register_model(fn) keys the entry point by fn.__name__, found on fn.__module__."""

    def __init__(self):
        self.entrypoints = {}

    def register_model(self, fn):
        assert getattr(sys.modules[fn.__module__], fn.__name__) is fn
        self.entrypoints[fn.__name__] = fn
        return fn

    def is_model(self, name):
        return name in self.entrypoints

    def create_model(self, name, pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs):
        kwargs = {k: v for k, v in kwargs.items() if v is not None}  # as timm.create_model does
        return self.entrypoints[name](pretrained=pretrained, pretrained_cfg=pretrained_cfg,
                                      pretrained_cfg_overlay=pretrained_cfg_overlay, **kwargs)


def test_register_adds_prefixed_entry_points_once():
    stub = StubRegistry()
    added = vitlab_timm.register("volo*", registry=stub)
    assert "vitlab_volo_d1" in added and "vitlab_volo_micro" in added
    assert sorted(added) == [f"vitlab_{n}" for n in vitlab.list_models("volo*")]
    assert vitlab_timm.register("volo*", registry=stub) == []  # idempotent


def test_entry_points_build_vitlab_models_with_timm_arguments(tmp_path):
    stub = StubRegistry()
    vitlab_timm.register("volo_micro", registry=stub)
    model = stub.create_model("vitlab_volo_micro", num_classes=5, drop_path_rate=None, cache_dir="x",
                              pretrained_cfg_overlay={"crop_pct": 1.0})
    assert model.model_name == "volo_micro" and model.num_classes == 5 and model.pretrained_cfg["crop_pct"] == 1.0
    torch.save(model.state_dict(), tmp_path / "w.pth")
    again = stub.create_model("vitlab_volo_micro", num_classes=5, pretrained=True,
                              pretrained_cfg={"file": str(tmp_path / "w.pth")})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), model.eval()(x))
    with pytest.raises(ValueError, match="does not download"):
        stub.create_model("vitlab_volo_micro", pretrained=True)
    with pytest.raises(ValueError, match="forward_intermediates"):
        stub.create_model("vitlab_volo_micro", features_only=True)


def test_register_without_timm_says_what_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    monkeypatch.setitem(sys.modules, "timm.models", None)
    with pytest.raises(ImportError, match="needs timm"):
        vitlab_timm.register()


# --- with the real timm (it needs torchvision; skipped where that cannot import) ---------------
def test_timm_create_model_builds_vitlab_models(real_timm):
    timm = real_timm
    vitlab_timm.register()
    assert "vitlab_uniformer_small" in timm.list_models("vitlab_*")
    model = timm.create_model("vitlab_volo_micro", num_classes=7)
    assert isinstance(model, vitlab.models.volo.VOLO) and model.num_classes == 7
    config = timm.data.resolve_model_data_config(model)
    assert config["input_size"] == (3, 64, 64) and config["crop_pct"] == 0.96
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 7)


def test_timm_checkpoint_path_loads_vitlab_weights(tmp_path, real_timm):
    timm = real_timm
    vitlab_timm.register("volo_micro")
    source = vitlab.create_model("volo_micro", num_classes=3).eval()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    model = timm.create_model("vitlab_volo_micro", num_classes=3, checkpoint_path=str(tmp_path / "w.pth")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), source(x))

"""Model folders: save_pretrained / from_pretrained round trips give identical outputs and carry their metadata."""
import json

import pytest
import torch

import vitlab
from vitlab.checkpoints.hub import CONFIG_NAME, WEIGHTS_NAME, split_tied
from vitlab.export import example_inputs, load_model

MICRO_MODELS = vitlab.list_models("*_micro")


def _outputs(model, inputs):
    model.eval()
    with torch.no_grad():
        out = model(*inputs)
    return out if isinstance(out, (tuple, list)) else [out] if isinstance(out, torch.Tensor) else list(out.values())


@pytest.mark.parametrize("name", MICRO_MODELS)
def test_round_trip_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = vitlab.create_model(name).eval()
    inputs = example_inputs(model, batch=1, generator=torch.Generator().manual_seed(1))
    model.save_pretrained(tmp_path)
    loaded = vitlab.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.model_name == name
    for a, b in zip(_outputs(model, inputs), _outputs(loaded, inputs)):
        assert torch.equal(a, b)


def test_config_describes_architecture_preprocessing_and_labels(tmp_path):
    model = vitlab.create_model("volo_micro", num_classes=3, drop_path_rate=0.1)
    model.save_pretrained(tmp_path, label_names=["cat", "dog", "eel"])
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["architecture"] == "volo_micro"
    assert config["kwargs"] == {"num_classes": 3, "drop_path_rate": 0.1}
    assert config["num_classes"] == 3 and config["label_names"] == ["cat", "dog", "eel"]
    pre = config["preprocessing"]
    assert pre["input_size"] == [3, 64, 64] and pre["crop_pct"] == 0.96 and pre["interpolation"] == "bicubic"
    assert pre["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pre["std"] == pytest.approx([0.229, 0.224, 0.225])
    loaded = vitlab.from_pretrained(tmp_path)
    assert loaded.label_names == ["cat", "dog", "eel"]
    assert loaded.pretrained_cfg["input_size"] == (3, 64, 64) and loaded.pretrained_cfg["crop_pct"] == 0.96


def test_custom_preprocessing_survives_the_round_trip(tmp_path):
    model = vitlab.create_model("volo_micro")
    model.pretrained_cfg = {**model.pretrained_cfg, "crop_pct": 1.0, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    model.save_pretrained(tmp_path)
    cfg = vitlab.from_pretrained(tmp_path).pretrained_cfg
    assert cfg["crop_pct"] == 1.0 and cfg["mean"] == (0.5, 0.5, 0.5) and cfg["std"] == (0.5, 0.5, 0.5)


def test_replaced_classifier_round_trips(tmp_path):
    """A model fine-tuned with reset_classifier(n) reloads with n classes although it was built with 1000."""
    torch.manual_seed(0)
    model = vitlab.create_model("volo_micro").eval()
    model.reset_classifier(4)
    model.save_pretrained(tmp_path, label_names=list("abcd"))
    loaded = vitlab.from_pretrained(tmp_path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert loaded(x).shape == (1, 4) and torch.equal(loaded(x), model(x))


def test_tied_weights_are_stored_once_and_restored(tmp_path):
    torch.manual_seed(0)
    model = vitlab.create_model("volo_micro", num_classes=6).eval()
    model.aux_head.weight = model.head.weight  # tie the two classifiers
    unique, tied = split_tied(model.state_dict())
    (alias, kept), = tied.items()  # the first name in state-dict order is kept
    assert {alias, kept} == {"aux_head.weight", "head.weight"} and alias not in unique and kept in unique
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["tied_weights"] == {alias: kept}
    from safetensors.torch import load_file
    stored = load_file(str(tmp_path / WEIGHTS_NAME))
    assert alias not in stored and kept in stored
    loaded = vitlab.from_pretrained(tmp_path)
    assert torch.equal(loaded.aux_head.weight, model.head.weight)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_size_override_rebuilds_and_resizes(tmp_path):
    vitlab.create_model("volo_micro").save_pretrained(tmp_path)
    bigger = vitlab.from_pretrained(tmp_path, img_size=96)
    assert bigger.pos_embed.shape[1:3] == (6, 6) and bigger.pretrained_cfg["input_size"] == (3, 96, 96)
    assert bigger(torch.randn(1, 3, 96, 96)).shape == (1, 1000)


def test_load_model_accepts_a_folder_or_a_name(tmp_path):
    vitlab.create_model("volo_micro", num_classes=2).save_pretrained(tmp_path / "folder")
    assert load_model(tmp_path / "folder").num_classes == 2
    assert load_model("volo_micro").num_classes == 1000
    vitlab.create_model("volo_micro", num_classes=4).save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "config.yaml").write_text("task: classification\n")
    assert load_model(tmp_path / "run").num_classes == 4            # a run folder: its model/
    assert vitlab.from_pretrained(tmp_path / "run").num_classes == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a vitlab model folder.*nor a run folder"):
        load_model(tmp_path / "empty")


def test_bad_folders_and_labels_give_clear_errors(tmp_path):
    model = vitlab.create_model("volo_micro", num_classes=3)
    with pytest.raises(ValueError, match="2 label names for a model with 3 classes"):
        model.save_pretrained(tmp_path, label_names=["a", "b"])
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="newer vitlab"):
        vitlab.from_pretrained(tmp_path)
    (tmp_path / CONFIG_NAME).write_text(json.dumps({**config, "tied_weights": {"head.bias": "nope"}}))
    with pytest.raises(ValueError, match="tied weight 'head.bias' refers to 'nope'"):
        vitlab.from_pretrained(tmp_path)

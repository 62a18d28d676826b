"""Model registry: names, families with official kwargs, aliases, errors."""
import json

import pytest
import torch

import vitlab
from vitlab.models.registry import UnknownModelError, build_without_weights


def test_list_models_patterns():
    names = vitlab.list_models("volo*")
    for n in ["volo_d1", "volo_d1_384", "volo_d2_384", "volo_d3_448", "volo_d4_448", "volo_d5_448", "volo_d5_512"]:
        assert n in names
    assert "volo" not in names and "volo" in vitlab.list_models("volo", include_families=True)
    assert vitlab.list_models("no_such_*") == []


def test_unknown_name_lists_closest():
    with pytest.raises(UnknownModelError, match=r"unknown model name 'volo_d6'.*Closest names: .*volo_d5"):
        vitlab.create_model("volo_d6")
    with pytest.raises(KeyError):
        vitlab.create_model("vollo_d1")


def test_family_accepts_official_kwargs_and_variant_overrides():
    kwargs = dict(layers=[1, 1, 1, 1], embed_dims=[16, 32, 32, 32], num_heads=[1, 2, 2, 2],
                  downsamples=[True, False, False, False], outlook_attention=[True, False, False, False],
                  mlp_ratios=[3, 3, 3, 3], post_layers=["ca", "ca"], stem_hidden_dim=8, img_size=32, num_classes=4)
    model = vitlab.create_model("volo", **kwargs).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    assert model.model_name == "volo" and model.model_kwargs == kwargs
    with torch.device("meta"):
        d1 = vitlab.create_model("volo_d1", num_classes=10, img_size=384)
    assert d1.head.out_features == 10 and d1.pos_embed.shape[1] == 24
    with torch.device("meta"):
        assert vitlab.create_model("volo_d1_224").model_name == "volo_d1"


def test_pretrained_true_without_released_weights_says_so(tmp_path):
    with pytest.raises(KeyError, match="no checkpoint 'volo_micro' in the model zoo"):
        vitlab.create_model("volo_micro", pretrained=True)
    src = vitlab.create_model("volo_micro", num_classes=3)
    torch.save(src.state_dict(), tmp_path / "w.pth")
    loaded = vitlab.create_model("volo_micro", num_classes=3, pretrained=str(tmp_path / "w.pth"))
    torch.testing.assert_close(loaded.head.weight, src.head.weight)


def test_every_variant_builds_and_declares_its_api():
    """All registered variants build (on the meta device) and expose the API DESIGN.md promises."""
    for name in vitlab.list_models():
        model = build_without_weights(name)
        for attr in ("forward_features", "forward_head", "forward_intermediates", "reset_classifier",
                     "set_grad_checkpointing", "no_weight_decay", "save_pretrained"):
            assert callable(getattr(model, attr, None)), f"{name} lacks {attr}"
        assert isinstance(model.pretrained_cfg, dict) and "input_size" in model.pretrained_cfg, name
        assert model.num_features > 0, name
        json.dumps(model.feature_info)


def test_cli_models_and_info(capsys):
    from vitlab.cli.main import main
    assert main(["models", "volo_d*", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["volo_d1"]["params_m"] == 26.63 and rows["volo_d5"]["params_m"] == 295.46
    assert main(["info", "volo_d1"]) == 0
    assert "stride 8, module network.0" in capsys.readouterr().out
    assert main(["info", "volo_d9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vitlab info: error: unknown model name 'volo_d9'") and "Closest names" in err


def test_cli_info_takes_model_and_run_folders(tmp_path, capsys):
    from vitlab.cli.main import main
    vitlab.create_model("volo_micro", num_classes=5).save_pretrained(tmp_path / "run" / "model")
    for folder in (tmp_path / "run" / "model", tmp_path / "run"):
        assert main(["info", str(folder), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["name"] == "volo_micro" and info["num_classes"] == 5
    assert main(["info", str(tmp_path)]) == 2  # neither a model folder nor a run folder
    assert capsys.readouterr().err.startswith("vitlab info: error: ")


def test_cli_models_reads_the_shipped_index(capsys):
    """`vitlab models` prints the static index; it must match the registry or it goes stale."""
    from vitlab.cli import models as cli_models
    from vitlab.models.index import REGENERATE, build_index, load_index
    shipped = load_index()
    assert build_index() == shipped, f"src/vitlab/models/model_index.json is out of date: run `{REGENERATE}`"
    assert cli_models.index_rows() == shipped
    rows = {r["name"]: r for r in shipped}
    assert rows["volo_micro"]["params"] == sum(p.numel() for p in vitlab.create_model("volo_micro").parameters())
    assert rows["volo"]["kind"] == "family" and rows["volo"]["params"] is None


def test_cli_bench_json(capsys):
    from vitlab.cli.main import main
    assert main(["bench", "--model", "volo_micro", "--batch-size", "2", "--train", "--iters", "1", "--warmup", "0",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params_m"] == pytest.approx(0.39, abs=0.01)
    assert result["gmacs"] > 0 and result["infer_img_s"] > 0 and result["train_img_s"] > 0
    assert result["infer_peak_mb"] > 0 and result["input_shape"] == [3, 64, 64]


@pytest.mark.parametrize("name", ["volo_micro", "pale_micro"])
def test_cli_bench_reference_side_by_side(name, capsys):
    from vitlab.cli.main import main
    assert main(["bench", "--model", name, "--batch-size", "2", "--train", "--iters", "1", "--warmup", "0",
                 "--no-flops", "--reference", "--json"]) == 0
    ref = json.loads(capsys.readouterr().out)["reference"]
    assert ref["max_abs_diff"] < 1e-4  # the reference path computes the same function
    assert ref["infer_img_s"] > 0 and ref["infer_speedup"] > 0 and ref["train_speedup"] > 0
    # the patched attention functions are restored afterwards
    import vitlab.attention.pale as pale
    assert pale.pale_attention.__module__ == "vitlab.attention.pale"


def test_cli_bench_old_flag_spellings(capsys):
    from vitlab.cli.main import main
    assert main(["bench", "--model", "volo_micro", "--batch", "1", "--img", "32", "--iters", "1", "--warmup", "0",
                 "--no-flops", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["batch"] == 1 and result["input_shape"] == [3, 32, 32]


def test_cli_bench_run_folder_and_family_name(tmp_path, capsys):
    from vitlab.cli.main import main
    model = vitlab.create_model("volo_micro", num_classes=3)
    model.save_pretrained(tmp_path / "model")
    assert main(["bench", "--model", str(tmp_path), "--batch-size", "1", "--iters", "1", "--warmup", "0",
                 "--no-flops", "--json"]) == 0  # a run folder: its model/ is benchmarked
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert json.loads(capsys.readouterr().out)["params_m"] == pytest.approx(params_m, abs=0.01)
    assert main(["bench", "--model", "volo", "--iters", "1", "--warmup", "0", "--no-flops"]) == 2
    assert capsys.readouterr().err.startswith("vitlab bench: error: 'volo' is a family name")


def test_cli_bench_reference_refuses_compile(capsys):
    from vitlab.cli.main import main
    assert main(["bench", "--model", "volo_micro", "--batch-size", "1", "--iters", "1", "--warmup", "0", "--no-flops",
                 "--compile", "--reference"]) != 0
    assert "leave out --compile" in capsys.readouterr().err

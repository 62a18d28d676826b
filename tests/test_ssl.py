"""Self-supervised pipeline: multi-crop augmentation, k-NN, linear probe, pretraining loop
(official checkpoint layout, exact resume, fp32 fall-back), CLI commands."""
import json

import pytest
import torch

import vitlab
from vitlab.cli.main import main as cli_main
from vitlab.data.multicrop import MultiCropAugmentation, MultiCropConfig, gaussian_blur
from vitlab.ssl.data import load_image_set
from vitlab.ssl.esvit import EsViTLoss
from vitlab.ssl.knn import knn_accuracy, knn_classify
from vitlab.ssl.linear_probe import train_linear_probe
from vitlab.ssl.pretrain import PretrainConfig, pretrain

TINY = dict(model="swin_micro", data="digits", global_size=16, local_size=8, n_local=2, out_dim=32,
            head_hidden_dim=16, head_bottleneck_dim=8, batch_size=8, max_iters_per_epoch=1, epochs=2,
            knn_every=0, held_out=300, drop_path_rate=0.1, figures=False)


@pytest.fixture(scope="module")
def digits():
    return load_image_set("digits", held_out=300)


def test_multicrop_shapes_determinism_and_normalisation():
    aug = MultiCropAugmentation(MultiCropConfig(global_size=24, local_size=12, n_local=3, mean=(0.5,), std=(0.5,)),
                                out_chans=3)
    images = torch.rand(5, 1, 28, 28)
    a = aug(images, torch.Generator().manual_seed(1))
    b = aug(images, torch.Generator().manual_seed(1))
    c = aug(images, torch.Generator().manual_seed(2))
    assert [tuple(x.shape) for x in a] == [(5, 3, 24, 24)] * 2 + [(5, 3, 12, 12)] * 3
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], c[0])
    assert a[0].min() >= -1.0 - 1e-5 and a[0].max() <= 1.0 + 1e-5
    with pytest.raises(ValueError, match="float images"):
        aug(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), torch.Generator())


def test_gaussian_blur_keeps_mean_and_smooths():
    x = torch.zeros(1, 1, 15, 15)
    x[..., 7, 7] = 1.0
    y = gaussian_blur(x, 1.0, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert y.sum().item() == pytest.approx(1.0, abs=1e-4) and y[..., 7, 7].item() < 0.5


def test_knn_weighted_vote():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = knn_classify(bank, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), 2, k=2, temperature=0.07)
    assert scores.argmax(1).tolist() == [0, 1]
    res = knn_accuracy(bank, labels, torch.tensor([[0.0, 2.0]]), torch.tensor([1]), k=1)
    assert res["top1"] == 100.0 and res["k"] == 1


def test_linear_probe_separates_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 4
    y = torch.arange(300) % 3
    x = centers[y] + torch.randn(300, 8, generator=g)
    res = train_linear_probe(x[:200], y[:200], x[200:], y[200:], epochs=50)
    assert res["top1"] > 95.0


def test_pretrain_official_layout_and_exact_resume(tmp_path, digits):
    pretrain(PretrainConfig(**{**TINY, "output": str(tmp_path / "full"), "knn_every": 2, "figures": True}), data=digits)
    ckpt = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    assert set(ckpt) >= {"student", "teacher", "optimizer", "epoch", "args", "dino_loss"}
    assert ckpt["epoch"] == 2 and all(k.startswith("module.") for k in ckpt["student"])
    assert "head_dense.last_layer.weight_v" in ckpt["teacher"] and "center_grid" in ckpt["dino_loss"]
    assert not torch.equal(ckpt["dino_loss"]["center"], torch.zeros_like(ckpt["dino_loss"]["center"]))
    lines = [json.loads(s) for s in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and "knn_top1" not in lines[0]
    assert {"loss", "view", "region", "teacher_entropy", "kl_to_uniform", "knn_top1"} <= set(lines[-1])
    assert (tmp_path / "full" / "figures" / "region_matches.png").stat().st_size > 1000
    assert (tmp_path / "full" / "figures" / "attention.png").stat().st_size > 1000
    # teacher weights load into a plain backbone (EsViT's evaluation path)
    plain = vitlab.create_model("swin_micro", num_classes=0, img_size=16, in_chans=1)
    vitlab.load_checkpoint(plain, str(tmp_path / "full" / "checkpoint.pth"), prefer="teacher")

    # one epoch, then resume for the second: identical to the straight run
    pretrain(PretrainConfig(**{**TINY, "output": str(tmp_path / "half"), "stop_after": 1}), data=digits)
    pretrain(PretrainConfig(**{**TINY, "output": str(tmp_path / "half"), "knn_every": 2}), resume=True, data=digits)
    resumed = torch.load(tmp_path / "half" / "checkpoint.pth", weights_only=True)
    for part in ("teacher", "student"):
        for k, v in ckpt[part].items():
            assert torch.equal(v, resumed[part][k]), f"{part}.{k} differs after resume"
    assert torch.equal(ckpt["dino_loss"]["center"], resumed["dino_loss"]["center"])


def test_view_only_loss_has_no_dense_head(tmp_path, digits):
    cfg = PretrainConfig(**{**TINY, "output": str(tmp_path / "v"), "loss": "view", "epochs": 1, "knn_every": 0})
    metrics = pretrain(cfg, data=digits)
    ckpt = torch.load(tmp_path / "v" / "checkpoint.pth", weights_only=True)
    assert not any(k.startswith("head_dense") for k in ckpt["teacher"]) and "region" not in metrics


def test_sinkhorn_centering_and_batchnorm_heads_train(tmp_path, digits):
    cfg = PretrainConfig(**{**TINY, "output": str(tmp_path / "sk"), "epochs": 1, "centering": "sinkhorn",
                            "use_bn_in_head": True})
    metrics = pretrain(cfg, data=digits)
    ckpt = torch.load(tmp_path / "sk" / "checkpoint.pth", weights_only=True)
    assert ckpt["args"]["centering"] == "sinkhorn" and torch.isfinite(torch.tensor(metrics["loss"]))
    assert any(k.startswith("head.mlp.") and k.endswith("running_var") for k in ckpt["teacher"])
    with pytest.raises(ValueError, match="centering must be"):
        pretrain(PretrainConfig(**{**TINY, "output": str(tmp_path / "bad"), "centering": "median"}), data=digits)


def test_teacher_momentum_schedule_end_value(tmp_path, digits):
    from vitlab.ssl.esvit import cosine_schedule
    cfg = PretrainConfig(**{**TINY, "output": str(tmp_path / "m"), "epochs": 1, "max_iters_per_epoch": 4,
                            "momentum_teacher": 0.9, "momentum_teacher_end": 0.95})
    last = cosine_schedule(0.9, 0.95, 1, 4)[-1]        # 0.943; ending at 1 would give 0.985
    assert pretrain(cfg, data=digits)["momentum"] == pytest.approx(last, abs=1e-6)


def test_nonfinite_autocast_step_falls_back_to_fp32(tmp_path, digits, monkeypatch, capsys):
    original = EsViTLoss.forward

    def flaky(self, student_out, teacher_out, epoch):
        loss = original(self, student_out, teacher_out, epoch)
        return loss * float("nan") if torch.is_autocast_enabled("cpu") else loss
    monkeypatch.setattr(EsViTLoss, "forward", flaky)
    cfg = PretrainConfig(**{**TINY, "output": str(tmp_path / "amp"), "amp": "bf16", "epochs": 1, "knn_every": 0})
    metrics = pretrain(cfg, data=digits)
    assert "fp32" in capsys.readouterr().out
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert torch.load(tmp_path / "amp" / "checkpoint.pth", weights_only=True)["amp_disabled"] is True


def test_cli_knn_and_linear_probe(tmp_path, digits, capsys):
    cfg = PretrainConfig(**{**TINY, "output": str(tmp_path / "c"), "epochs": 1, "knn_every": 0})
    pretrain(cfg, data=digits)
    ckpt = str(tmp_path / "c" / "checkpoint.pth")
    capsys.readouterr()
    assert cli_main(["knn", "-c", ckpt, "--data", "digits", "--held-out", "300", "--baselines", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["features"].split(" ")[0] for r in rows][1:] == ["random", "raw", "raw"]
    assert all(r["k"] == 20 and r["T"] == 0.07 and 0 <= r["top1"] <= 100 for r in rows)
    assert cli_main(["linear-probe", "-c", ckpt, "--data", "digits", "--held-out", "300", "--epochs", "3",
                     "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["features"].startswith("last4 (") and res["top1"] > 20.0
    assert cli_main(["knn", "-c", str(tmp_path / "missing.pth"), "--data", "digits"]) == 2


def test_cli_small_preset_replaces_defaults_but_keeps_explicit_flags():
    import argparse
    from vitlab.cli import pretrain as cli
    from vitlab.ssl.pretrain import SMALL_DATA_PRESET
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    paper = cli.config_from_args(parser.parse_args([]))
    assert (paper.out_dim, paper.momentum_teacher, paper.global_size) == (65536, 0.996, 224)
    small = cli.config_from_args(parser.parse_args(["--preset", "small", "--lr", "2e-3", "--out-dim", "4096"]))
    assert (small.lr, small.out_dim) == (2e-3, 4096)                    # explicit flags win
    for key in ("momentum_teacher", "weight_decay_end", "freeze_last_layer", "global_size", "local_scale"):
        assert getattr(small, key) == SMALL_DATA_PRESET[key], key

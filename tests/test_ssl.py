"""Self-supervised pretraining on the engine: per-sample multi-crop and its batched photometric part, k-NN and
feature extraction, the linear probe, the ``pretraining`` task (run folder, teacher/student checkpoint,
teacher momentum schedule, fp32 fall-back, unlabelled / folder / ``train`` + ``val`` data, unreadable files)
and the ``pretrain`` / ``knn`` / ``linear-probe`` commands.

DDP against one process and SIGKILL + ``--resume`` are checked for this task in ``test_engine_tasks.py``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import vitlab
from test_train_utils import load_state, micro_config, read_metrics, train
from vitlab.cli.main import main as cli_main
from vitlab.data.multicrop import (MultiCropConfig, MultiCropTransform, apply_photometric, draw_photometric,
                                   gaussian_blur, multicrop_batch)
from vitlab.errors import ConfigError
from vitlab.ssl.esvit import EsViTLoss
from vitlab.ssl.knn import extract_features, knn_accuracy, knn_classify
from vitlab.ssl.linear_probe import train_linear_probe

# swin_micro at 16 px on digits, two epochs of six steps (the recipe of test_engine_tasks.py)
MICRO = {
    "model": {"drop_path": 0.0},
    "data": {"name": "digits", "batch_size": 16, "options": {"held_out": 300, "train_limit": 96}},
    "esvit": {"global_size": 16, "local_size": 8, "n_local": 2, "out_dim": 32, "head_hidden_dim": 16,
              "head_bottleneck_dim": 8, "figures": False},
    "optim": {"lr": 5e-3},
    "sched": {"epochs": 2, "warmup_epochs": 0.5},
    "run": {"threads": 1, "log_every": 1, "plots": False, "progress": "log"},
}


def micro(output, **sections) -> dict:
    return micro_config(output, "pretraining", MICRO, **sections)


def records(run_dir, kind: str) -> list[dict]:
    return [r for r in read_metrics(run_dir) if r["kind"] == kind]


def backbone_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(("head.", "head_dense."))}


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def noise_image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


SIZES = [(20, 30), (40, 24), (17, 17), (33, 50), (25, 25), (60, 30)]   # (h, w): mixed sizes and aspect ratios


def image_folder(root: Path, classes: dict[str, int], seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` with ``classes[name]`` noise images of mixed sizes each."""
    n = 0
    for name, count in classes.items():
        for i in range(count):
            h, w = SIZES[n % len(SIZES)]
            write_png(root / name / f"{name}{i}.png", noise_image(h, w, seed + n))
            n += 1
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One micro pretraining run with its figures and curves (shared by the read-only checks)."""
    out = tmp_path_factory.mktemp("ssl") / "run"
    summary = train(micro(out, esvit={"figures": True}, run={"plots": True}))
    return out, summary


# --- multi-crop ---------------------------------------------------------------------------------------

CROPS = MultiCropConfig(global_size=24, local_size=12, n_local=3)


def test_multicrop_transform_shapes_determinism_and_range():
    img = torch.from_numpy(noise_image(28, 40, 0)).permute(2, 0, 1).contiguous()       # uint8 (3, 28, 40)
    t = MultiCropTransform(CROPS, in_chans=3)
    a_crops, a_params = t(img, torch.Generator().manual_seed(1))
    b_crops, b_params = t(img, torch.Generator().manual_seed(1))
    c_crops, c_params = t(img, torch.Generator().manual_seed(2))
    assert [tuple(c.shape) for c in a_crops] == [(3, 24, 24)] * 2 + [(3, 12, 12)] * 3
    assert len(a_params) == 5 and all(set(p) >= {"jitter", "gray", "blur", "sigma", "solarize"} for p in a_params)
    assert all(torch.equal(x, y) for x, y in zip(a_crops, b_crops))
    assert all(torch.equal(p[k], q[k]) for p, q in zip(a_params, b_params) for k in p)
    assert not torch.equal(a_crops[0], c_crops[0])
    assert any(not torch.equal(p[k], q[k]) for p, q in zip(a_params, c_params) for k in p)
    assert all(c.dtype == torch.float32 and c.min() >= 0.0 and c.max() <= 1.0 for c in a_crops)
    # a float image in [0, 1] gives the same crops as its uint8 original; in_chans=1 averages the channels
    f_crops, _ = t(img.float() / 255.0, torch.Generator().manual_seed(1))
    assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a_crops, f_crops))
    g_crops, _ = MultiCropTransform(CROPS, in_chans=1)(img, torch.Generator().manual_seed(1))
    assert [tuple(c.shape) for c in g_crops] == [(1, 24, 24)] * 2 + [(1, 12, 12)] * 3
    # the first global view is always blurred and never solarised
    assert a_params[0]["solarize"] == 0.0 and a_params[0]["blur"] == 1.0


def _params(n: int, **forced) -> dict[str, torch.Tensor]:
    """Collated photometric parameters of ``n`` crops with every effect off, then ``forced`` set."""
    p = draw_photometric(CROPS, 24, 0.0, 0.0, torch.Generator().manual_seed(0))
    p = {k: v.repeat(n) for k, v in p.items()}
    p.update(jitter=torch.zeros(n), gray=torch.zeros(n), blur=torch.zeros(n), solarize=torch.zeros(n))
    p.update({k: torch.as_tensor(v, dtype=torch.float32).expand(n).clone() for k, v in forced.items()})
    return p


def test_apply_photometric_normalises_and_each_effect_follows_its_parameter():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=g)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    plain = apply_photometric(x, _params(2), mean, std)
    assert torch.allclose(plain, (x - m) / s, atol=1e-6)                       # every effect off: normalisation only
    solar = apply_photometric(x, _params(2, solarize=[1.0, 0.0]), mean, std) * s + m
    assert torch.allclose(solar[0], torch.where(x[0] >= 0.5, 1 - x[0], x[0]), atol=1e-5)
    assert torch.allclose(solar[1], x[1], atol=1e-5)
    gray = apply_photometric(x, _params(2, gray=[0.0, 1.0]), mean, std) * s + m
    assert torch.allclose(gray[1, 0], gray[1, 1], atol=1e-5) and torch.allclose(gray[1, 1], gray[1, 2], atol=1e-5)
    assert torch.allclose(gray[0], x[0], atol=1e-5)
    blurred = apply_photometric(x, _params(2, blur=[1.0, 0.0], sigma=2.0, sigma_max=2.0), mean, std) * s + m
    tv = lambda t: (t[..., 1:] - t[..., :-1]).abs().mean()                     # noqa: E731
    assert tv(blurred[0]) < 0.5 * tv(x[0]) and torch.allclose(blurred[1], x[1], atol=1e-5)
    jitter = apply_photometric(x, _params(2, jitter=[1.0, 0.0], brightness=0.5), mean, std) * s + m
    assert jitter[0].mean() < 0.8 * x[0].mean() and torch.allclose(jitter[1], x[1], atol=1e-5)
    # one-channel crops are repeated to the model's channels after normalisation
    one = apply_photometric(x[:, :1], _params(2), (0.5,), (0.25,), out_chans=3)
    assert one.shape == (2, 3, 24, 24) and torch.allclose(one[:, 2], (x[:, 0] - 0.5) / 0.25, atol=1e-6)


def test_gaussian_blur_keeps_the_mean_and_smooths_a_delta_per_image():
    x = torch.zeros(3, 1, 15, 15)
    x[..., 7, 7] = 1.0
    y = gaussian_blur(x, torch.tensor([1.0, 2.0, 1.0]), torch.tensor([1.0, 1.0, 0.0]), 2.0)
    assert y[:2].sum((1, 2, 3)).tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert y[0, 0, 7, 7] < 0.5 and y[1, 0, 7, 7] < y[0, 0, 7, 7]            # a wider sigma spreads more
    assert torch.equal(y[2], x[2])                                            # not applied: unchanged
    assert torch.allclose(y[0, 0], y[0, 0].T, atol=1e-6)                      # separable and symmetric


def test_multicrop_batch_collates_samples_into_normalised_views():
    from torch.utils.data import default_collate
    t = MultiCropTransform(CROPS, in_chans=1)
    img = torch.from_numpy(noise_image(28, 40, 1)[..., 0]).unsqueeze(0)
    samples = [t(img, torch.Generator().manual_seed(s)) for s in (0, 1)]
    views = multicrop_batch(default_collate(samples), (0.5,), (0.5,), torch.device("cpu"), out_chans=1)
    assert [tuple(v.shape) for v in views] == [(2, 1, 24, 24)] * 2 + [(2, 1, 12, 12)] * 3
    assert all(v.min() >= -1 - 1e-5 and v.max() <= 1 + 1e-5 for v in views)
    first = apply_photometric(samples[1][0][0][None], {k: v[None] for k, v in samples[1][1][0].items()},
                              (0.5,), (0.5,), 1)
    assert torch.allclose(views[0][1:2], first, atol=1e-6)


# --- k-NN, features, linear probe --------------------------------------------------------------------

def test_knn_weighted_vote():
    bank = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    scores = knn_classify(bank, labels, torch.tensor([[1.0, 0.05], [0.05, 1.0]]), 2, k=2, temperature=0.07)
    assert scores.argmax(1).tolist() == [0, 1]
    # the weight of a neighbour is exp(cos / T): two close neighbours of class 0 outvote one exact match of 1
    s = knn_classify(bank, labels, torch.tensor([[0.6, 0.8]]), 2, k=3, temperature=1.0)[0]
    cos = torch.nn.functional.normalize(bank, dim=1) @ torch.tensor([0.6, 0.8])
    assert s.tolist() == pytest.approx([float(cos[:2].exp().sum()), float(cos[2].exp())], rel=1e-5)
    res = knn_accuracy(bank, labels, torch.tensor([[0.0, 2.0]]), torch.tensor([1]), k=1)
    assert res["top1"] == 100.0 and res["k"] == 1
    assert knn_accuracy(bank, labels, torch.tensor([[0.0, 2.0]]), torch.tensor([0]), k=1)["top1"] == 0.0
    # k larger than the bank uses (and reports) the whole bank
    assert knn_accuracy(bank, labels, torch.tensor([[0.0, 2.0]]), torch.tensor([1]), k=20)["k"] == 3


def test_extract_features_one_row_per_readable_image_and_names_the_skipped_file(tmp_path):
    from vitlab.data.folder import ImageFolder
    from vitlab.data.transforms import build_eval_transform
    root = image_folder(tmp_path / "imgs", {"cat": 3, "dog": 2})
    (root / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg" * 20)
    t = build_eval_transform({"input_size": (3, 16, 16), "crop_pct": 1.0}, 3, (0.5,) * 3, (0.25,) * 3)
    data = ImageFolder(root, transform=t)
    assert len(data) == 6
    torch.manual_seed(0)
    backbone = vitlab.create_model("swin_micro", num_classes=0, img_size=16)
    feats, labels, skipped = extract_features(backbone, data, device=torch.device("cpu"), batch_size=4)
    assert feats.shape == (5, backbone.num_features) and labels.tolist() == [0, 0, 0, 1, 1]
    assert len(skipped) == 1 and "broken.jpg" in skipped[0]
    readable = torch.stack([data[i][0] for i in range(6) if not data.samples[i][0].endswith("broken.jpg")])
    with torch.no_grad():
        expected = backbone.eval().forward_head(backbone.forward_features(readable), pre_logits=True)
    assert torch.allclose(feats, expected, atol=1e-5)


def test_linear_probe_separates_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(3, 8, generator=g) * 4
    y = torch.arange(300) % 3
    x = centers[y] + torch.randn(300, 8, generator=g)
    res = train_linear_probe(x[:200], y[:200], x[200:], y[200:], epochs=50)
    assert res["top1"] > 95.0 and res["train_top1"] > 95.0
    noise = train_linear_probe(torch.randn(200, 8, generator=g), y[:200], torch.randn(100, 8, generator=g),
                               y[200:], epochs=50)
    assert noise["top1"] < 60.0


# --- the pretraining task -----------------------------------------------------------------------------

def test_pretraining_run_folder_checkpoint_and_teacher_backbone(run):
    out, summary = run
    for name in ("config.yaml", "metrics.jsonl", "last.pth", "best.pth", "final.json", "curves.png",
                 "model/config.json", "model/model.safetensors"):
        assert (out / name).is_file(), name
    for name in ("region_matches.png", "attention.png"):
        path = out / "figures" / name
        assert path.stat().st_size > 1000, name
        with Image.open(path) as im:
            assert im.format == "PNG" and min(im.size) > 50
    assert json.loads((out / "final.json").read_text())["knn_top1"] == pytest.approx(summary["knn_top1"])

    state = load_state(out)
    assert {"model", "teacher", "dino_loss", "esvit_data", "optimizer", "scheduler", "rng", "step", "epoch",
            "engine", "meta"} <= set(state)
    assert state["step"] == 12 and state["epoch"] == 2 and state["meta"]["model_name"] == "swin_micro"
    for head in ("head", "head_dense"):
        assert {f"{head}.last_layer.weight_g", f"{head}.last_layer.weight_v"} <= set(state["teacher"])
        assert f"{head}.last_layer.weight_v" in state["model"]
    for centre in ("center", "center_grid"):
        c = state["dino_loss"][centre]
        assert c.shape == (1, 32) and torch.isfinite(c).all() and c.abs().max() > 0
    assert state["esvit_data"]["in_chans"] == 1 and state["esvit_data"]["global_size"] == 16

    train_recs, evals = records(out, "train"), records(out, "eval")
    assert len(train_recs) == 12
    assert all({"loss", "view", "region", "teacher_entropy", "kl_to_uniform"} <= set(r) for r in train_recs)
    assert all(0 < r["teacher_entropy"] <= math.log(32) + 1e-4 for r in train_recs)
    assert [r["epoch"] for r in evals] == [1, 2] and all(0 <= r["knn_top1"] <= 100 for r in evals)
    assert all(r["knn_bank"] == 96 and r["knn_queries"] == 300 for r in evals)
    best = load_state(out, "best.pth")
    assert best["engine"]["best"] == pytest.approx(max(r["knn_top1"] for r in evals))

    # the teacher, not the student, loads into a plain backbone
    teacher, student = backbone_state(state["teacher"]), backbone_state(state["model"])
    assert any(not torch.equal(teacher[k], student[k]) for k in teacher)
    plain = vitlab.create_model("swin_micro", num_classes=0, img_size=16, in_chans=1)
    report = vitlab.load_checkpoint(plain, out / "last.pth", strict=False, prefer="teacher")
    assert report.missing == [] and all(k.startswith(("head.", "head_dense.")) for k in report.unexpected)
    loaded = plain.state_dict()
    assert all(torch.equal(loaded[k], teacher[k]) for k in loaded)

    # model/ is the teacher backbone with the run's preprocessing
    folder = vitlab.from_pretrained(out / "model")
    pre = folder.pretrained_cfg
    assert tuple(pre["mean"]) == pytest.approx(state["esvit_data"]["mean"]) and tuple(pre["input_size"]) == (1, 16, 16)
    assert pre["crop_pct"] == pytest.approx(0.875)
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(folder.forward_features(x), plain.eval().forward_features(x), atol=1e-6)
        student_net = vitlab.create_model("swin_micro", num_classes=0, img_size=16, in_chans=1)
        student_net.load_state_dict(student)
        assert not torch.allclose(folder.forward_features(x), student_net.eval().forward_features(x), atol=1e-4)


def test_view_loss_has_no_region_head_or_metric(tmp_path):
    out = tmp_path / "view"
    train(micro(out, esvit={"loss": "view"}, sched={"max_steps": 2}))
    state = load_state(out)
    assert not any(k.startswith("head_dense") for part in ("teacher", "model") for k in state[part])
    assert any(k.startswith("head.") for k in state["teacher"])
    assert state["dino_loss"]["center_grid"].abs().max() == 0       # no region outputs moved it
    recs = records(out, "train")
    assert len(recs) == 2 and all("view" in r and "region" not in r for r in recs)
    assert all(r["loss"] == pytest.approx(r["view"], rel=1e-6) for r in recs)


def test_sinkhorn_targets_with_batchnorm_heads_train_and_bad_centering_is_refused(tmp_path):
    out = tmp_path / "sk"
    train(micro(out, esvit={"centering": "sinkhorn", "use_bn_in_head": True}, sched={"max_steps": 3}))
    recs = records(out, "train")
    assert len(recs) == 3 and all(math.isfinite(r["loss"]) and math.isfinite(r["region"]) for r in recs)
    teacher = load_state(out)["teacher"]
    running = {k: v for k, v in teacher.items() if k.startswith(("head.mlp.", "head_dense.mlp."))
               and k.endswith(("running_mean", "running_var"))}
    assert len(running) == 8                                          # 2 BatchNorms in each of the 2 heads
    assert all(torch.isfinite(v).all() for v in running.values())
    assert any(k.endswith("running_mean") and v.abs().max() > 0 for k, v in running.items())
    assert "centering: sinkhorn" in (out / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="esvit.centering"):
        micro(tmp_path / "bad", esvit={"centering": "median"})


def test_teacher_momentum_follows_the_cosine_to_its_end_value(tmp_path, monkeypatch):
    """The teacher after each optimizer step is m_i * teacher + (1 - m_i) * student with m_i on the cosine
    from momentum_teacher (step 0) towards momentum_teacher_end (0.943 at the 4th of 4 steps, not 1)."""
    from vitlab.ssl.esvit import cosine_schedule
    from vitlab.tasks.pretraining import PretrainingTask
    seen = []
    original = PretrainingTask.after_optimizer_step

    def observed(self, session):
        before = {k: v.detach().clone() for k, v in self.teacher.named_parameters()}
        original(self, session)
        seen.append((session.pos.step, session.total_steps, before,
                     {k: v.detach().clone() for k, v in self.model.named_parameters()},
                     {k: v.detach().clone() for k, v in self.teacher.named_parameters()}))
    monkeypatch.setattr(PretrainingTask, "after_optimizer_step", observed)
    cfg = micro(tmp_path / "m", data={"options": {"held_out": 300, "train_limit": 64}}, optim={"lr": 0.05},
                sched={"epochs": 1, "warmup_epochs": 0.0}, run={"eval_every": 0},
                esvit={"momentum_teacher": 0.9, "momentum_teacher_end": 0.95, "freeze_last_layer": 0})
    train(cfg)
    assert [s[0] for s in seen] == [0, 1, 2, 3] and {s[1] for s in seen} == {4}
    momenta = []
    for _, _, before, student, after in seen:
        num = den = 0.0
        for k in before:
            d = (before[k] - student[k]).double()
            num += float(((after[k] - student[k]).double() * d).sum())
            den += float((d * d).sum())
        assert den > 1e-6                                             # the student moved away from the teacher
        momenta.append(num / den)
    expected = [0.95 + 0.5 * (0.9 - 0.95) * (1 + math.cos(math.pi * i / 4)) for i in range(4)]
    assert momenta == pytest.approx(expected, abs=2e-4)
    assert momenta == pytest.approx(list(cosine_schedule(0.9, 0.95, 1, 4)), abs=2e-4)
    assert momenta[0] == pytest.approx(0.9, abs=2e-4) and momenta[-1] == pytest.approx(0.9427, abs=5e-4)
    final = load_state(tmp_path / "m")["teacher"]
    assert all(torch.equal(final[k], seen[-1][4][k]) for k in seen[-1][4])


def test_nonfinite_autocast_step_is_redone_in_fp32_without_moving_the_centres_twice(tmp_path, monkeypatch, capsys):
    """Under autocast the teacher outputs (and so the loss) turn NaN; the step is redone in fp32. The centres
    move only with the accepted step's teacher outputs, so they stay finite."""
    original = EsViTLoss.forward

    def flaky(self, student_out, teacher_out, epoch, update_center=True):
        if torch.is_autocast_enabled("cpu"):
            cls, region, feats, npatch = teacher_out
            teacher_out = (cls * float("nan"), None if region is None else region * float("nan"), feats, npatch)
        return original(self, student_out, teacher_out, epoch, update_center=update_center)
    monkeypatch.setattr(EsViTLoss, "forward", flaky)
    out = tmp_path / "amp"
    summary = train(micro(out, amp={"dtype": "bf16"}, sched={"max_steps": 3}))
    text = capsys.readouterr().out
    assert "fp32" in text and "autocast" in text and summary["step"] == 3
    recs = records(out, "train")
    assert len(recs) == 3 and all(math.isfinite(r["loss"]) for r in recs)
    state = load_state(out)
    assert state["engine"]["amp"] is None
    for centre in ("center", "center_grid"):
        assert torch.isfinite(state["dino_loss"][centre]).all() and state["dino_loss"][centre].abs().max() > 0
    assert all(torch.isfinite(v).all() for v in state["teacher"].values() if v.is_floating_point())


def test_unlabelled_images_pretrain_without_knn(tmp_path, capsys):
    root = tmp_path / "photos"
    for i, (h, w) in enumerate(SIZES):
        write_png(root / ("nested" if i % 2 else "") / f"p{i}.png", noise_image(h, w, i))
    out = tmp_path / "u"
    summary = train(micro(out, data={"name": f"images:{root}", "batch_size": 3, "options": {}},
                          esvit={"figures": True}, sched={"epochs": 1}))
    text = capsys.readouterr().out
    assert "no labels" in text and "knn_top1" not in summary and summary["step"] == 2
    assert records(out, "eval") == [] and len(records(out, "train")) == 2
    assert records(out, "data")[0]["labelled"] is False and records(out, "data")[0]["train"] == 6
    assert not (out / "best.pth").exists() and (out / "figures" / "region_matches.png").stat().st_size > 1000
    model = vitlab.from_pretrained(out / "model")
    assert model.pretrained_cfg["input_size"][0] == 3
    assert model.forward_features(torch.rand(1, 3, 16, 16)).shape[-1] == model.num_features


def _thirds(h: int, w: int, middle, wide: bool) -> np.ndarray:
    """The first sixth of the width (``wide``) or height red, the last sixth blue, the rest ``middle``."""
    img = np.zeros((h, w, 3), np.uint8)
    img[...] = middle
    edge = (w if wide else h) // 6
    if wide:
        img[:, :edge] = (255, 0, 0)
        img[:, w - edge:] = (0, 0, 255)
    else:
        img[:edge] = (255, 0, 0)
        img[h - edge:] = (0, 0, 255)
    return img


def test_folder_images_are_decoded_lazily_at_their_own_size_and_aspect(tmp_path):
    """A full-area global crop of a 30x60 (or 60x30) image is its centred 4:3 (3:4) box: with red and blue
    sixths at both ends the crop is all middle colour, which it could not be had the image been resized to a
    square first. Changing the file afterwards changes the crop: the image is read when the sample is."""
    from vitlab.tasks.pretraining import PretrainingTask
    root = tmp_path / "aspect"
    wide = write_png(root / "train" / "a" / "wide.png", _thirds(30, 60, (0, 255, 0), wide=True))
    write_png(root / "train" / "b" / "tall.png", _thirds(60, 30, (0, 255, 0), wide=False))
    for c in "ab":
        write_png(root / "val" / c / "v.png", noise_image(20, 20, 0))
    cfg = micro(tmp_path / "unused", data={"name": f"folder:{root}", "batch_size": 2, "options": {}},
                esvit={"global_scale": [1.0, 1.0], "n_local": 0})
    task = PretrainingTask()
    task.build(SimpleNamespace(cfg=cfg, device=torch.device("cpu")))
    assert isinstance(task.train_set.transform, MultiCropTransform) and len(task.train_set) == 2
    green = torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1)
    for seed in range(5):
        for i in range(2):
            (crops, _), label = task.train_set[(i, seed)]
            assert label == i and [tuple(c.shape) for c in crops] == [(3, 16, 16)] * 2
            for c in crops:
                assert torch.allclose(c, green.expand_as(c), atol=1e-6), (i, seed)
    write_png(wide, _thirds(30, 60, (255, 255, 255), wide=True))
    (crops, _), _ = task.train_set[(0, 0)]
    assert torch.allclose(crops[0], torch.ones_like(crops[0]), atol=1e-6)


def test_train_and_val_folders_give_the_knn_bank_and_queries(tmp_path):
    root = tmp_path / "tv"
    image_folder(root / "train", {"a": 5, "b": 3}, seed=0)
    image_folder(root / "val", {"a": 2, "b": 1}, seed=100)
    out = tmp_path / "run"
    summary = train(micro(out, data={"name": f"folder:{root}", "batch_size": 4, "options": {}},
                          sched={"epochs": 1}))
    evals = records(out, "eval")
    assert len(evals) == 1 and evals[0]["knn_bank"] == 8 and evals[0]["knn_queries"] == 3
    assert evals[0]["knn_k"] == 8 and evals[0]["knn_skipped"] == 0
    assert summary["knn_queries"] == 3 and summary["step"] == 2
    assert load_state(out)["esvit_data"]["in_chans"] == 3


def test_unreadable_pretraining_image_is_skipped_named_and_counted(tmp_path, capsys):
    root = tmp_path / "bad"
    image_folder(root / "train", {"a": 4, "b": 3}, seed=0)
    (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 10)
    image_folder(root / "val", {"a": 1, "b": 1}, seed=50)
    out = tmp_path / "run"
    train(micro(out, data={"name": f"folder:{root}", "batch_size": 4, "options": {}}, sched={"epochs": 2}))
    text = capsys.readouterr().out
    assert "broken.jpg" in text and "skipped 1 unreadable" in text
    epochs = records(out, "epoch")
    assert [r["skipped_images"] for r in epochs] == [1, 2]
    assert all(len(r["skipped_files"]) == 1 and "broken.jpg" in r["skipped_files"][0] for r in epochs)
    evals = records(out, "eval")
    assert all(r["knn_bank"] == 7 and r["knn_skipped"] == 1 and r["knn_queries"] == 2 for r in evals)


# --- commands -----------------------------------------------------------------------------------------

def _pretrain_config(argv: list[str]) -> dict:
    import argparse

    from vitlab.cli import pretrain as cli
    from vitlab.cli.common import run_config
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return run_config(parser.parse_args(argv), task="pretraining", flags=cli.FLAGS, switches=cli.SWITCHES)


def test_cli_preset_small_keeps_explicit_flags_even_when_they_equal_defaults():
    paper = _pretrain_config([])
    assert (paper["esvit"]["out_dim"], paper["esvit"]["momentum_teacher"], paper["esvit"]["global_size"],
            paper["optim"]["lr"]) == (65536, 0.996, 224, 5e-4)
    small = _pretrain_config(["--preset", "small"])
    assert (small["optim"]["lr"], small["esvit"]["global_size"], small["esvit"]["n_local"]) == (0.004, 32, 0)
    explicit = _pretrain_config(["--preset", "small", "--lr", "5e-4", "--img-size", "224", "--out-dim", "4096"])
    assert (explicit["optim"]["lr"], explicit["esvit"]["global_size"], explicit["esvit"]["out_dim"]) == \
        (5e-4, 224, 4096)
    for section, key in (("esvit", "momentum_teacher"), ("esvit", "n_local"), ("sched", "weight_decay_end"),
                         ("esvit", "freeze_last_layer"), ("esvit", "local_scale")):
        assert explicit[section][key] == small[section][key] != paper[section][key], key


def test_cli_pretrain_with_preset_writes_the_merged_config(tmp_path, capsys):
    import yaml
    out = tmp_path / "cli"
    argv = ["pretrain", "--preset", "small", "--lr", "5e-4", "--img-size", "24", "--data", "digits", "--held-out",
            "300", "--set", "data.options.train_limit=32", "--batch-size", "16", "--epochs", "1", "--threads", "1",
            "--no-figures", "--progress", "log", "--output", str(out), "--json"]
    assert cli_main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    summary = json.loads("\n".join(lines[len(lines) - 1 - lines[::-1].index("{"):]))
    assert summary["task"] == "pretraining" and 0 <= summary["knn_top1"] <= 100 and summary["step"] == 2
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["task"] == "pretraining" and cfg["optim"]["lr"] == 5e-4 and cfg["esvit"]["global_size"] == 24
    assert (cfg["esvit"]["n_local"], cfg["esvit"]["out_dim"], cfg["esvit"]["momentum_teacher"]) == (0, 1024, 0.99)
    assert cfg["sched"]["weight_decay_end"] == 0.04 and cfg["esvit"]["figures"] is False
    state = load_state(out)
    assert state["teacher"]["head.last_layer.weight_v"].shape == (1024, 64) and state["esvit_data"]["global_size"] == 24
    assert tuple(vitlab.from_pretrained(out / "model").pretrained_cfg["input_size"]) == (1, 24, 24)


def test_cli_knn_and_linear_probe_on_a_run(run, tmp_path, capsys):
    out, _ = run
    common = ["--data", "digits", "--held-out", "300", "--threads", "1", "--json"]
    capsys.readouterr()
    assert cli_main(["knn", "--model", str(out), *common, "--baselines"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 4
    assert "random init" in rows[1]["features"] and rows[2]["features"].startswith("raw pixels @16px")
    assert rows[3]["features"].startswith("raw pixels (mean-centred)")
    assert all(r["k"] == 20 and r["T"] == 0.07 and 0 <= r["top1"] <= 100 and r["queries"] == 300 for r in rows)
    assert len({r["bank"] for r in rows}) == 1 and rows[0]["bank"] > 1000
    assert str(out) in rows[0]["features"]

    assert cli_main(["knn", "--checkpoint", str(out / "last.pth"), *common]) == 0
    from_checkpoint = json.loads(capsys.readouterr().out)
    assert len(from_checkpoint) == 1 and from_checkpoint[0]["top1"] == pytest.approx(rows[0]["top1"])
    assert "teacher" in from_checkpoint[0]["features"] or "last.pth" in from_checkpoint[0]["features"]

    assert cli_main(["linear-probe", "--model", str(out), *common, "--epochs", "3"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["features"].startswith("last4 (") and 20.0 < res["top1"] <= 100.0 and res["test_images"] == 300

    assert cli_main(["knn", "--checkpoint", str(tmp_path / "missing.pth"), "--data", "digits"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vitlab knn: error:") and "missing.pth" in err[0]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_knn_under_torchrun_extracts_in_parallel_and_matches_one_process(tmp_path):
    """Each of 2 gloo processes extracts its shard of the bank and the queries; the gathered k-NN is the same."""
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root / "src"), "OMP_NUM_THREADS": "1"}
    args = ["knn", "--model", "swin_micro", "--img-size", "16", "--data", "digits", "--held-out", "300", "--json",
            "--batch-size", "64", "--threads", "1"]
    one = subprocess.run([sys.executable, "-m", "vitlab", *args], env=env, capture_output=True, text=True, timeout=300)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "vitlab", *args], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert a[0]["bank"] == b[0]["bank"] == 1497 and a[0]["queries"] == b[0]["queries"] == 300
    assert b[0]["top1"] == pytest.approx(a[0]["top1"], abs=1e-6) and b[0]["top5"] == pytest.approx(a[0]["top5"])

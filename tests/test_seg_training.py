"""The segmentation task on the engine: mmcv's poly schedule, what a run folder holds, ``segment eval`` of a
run, the decode-head lr multiplier, the ``segment train`` CLI (refusal, --max-steps + --resume), and (slow)
a micro SegViT learning the built-in set."""
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("skimage", reason="the built-in set cuts its textures from scikit-image's bundled images")

import vitlab  # noqa: E402
from vitlab.cli.main import main  # noqa: E402
from vitlab.data.segmentation import SegmentationFolder  # noqa: E402
from vitlab.data.synthetic_scenes import CLASS_NAMES, write_texture_scenes  # noqa: E402
from vitlab.engine.config import load_yaml  # noqa: E402
from vitlab.engine.schedule import StepSchedule, poly_lr_at  # noqa: E402
from vitlab.tasks import make_config  # noqa: E402

from test_train_utils import load_state, merge, micro_config, read_metrics, train  # noqa: E402

RECIPE = {"data": {"name": "texture-scenes", "batch_size": 4},
          "seg": {"crop_size": 32, "overlays": 2},
          "sched": {"steps": 6, "warmup_steps": 2}, "optim": {"lr": 5e-3},
          "run": {"threads": 1, "log_every": 1, "progress": "log", "eval_every_steps": 3}}


def _json_after_logs(text: str) -> dict:
    """The JSON object a ``--json`` command prints after its log lines."""
    return json.loads(text[0 if text.startswith("{") else text.index("\n{\n") + 1:])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return write_texture_scenes(tmp_path_factory.mktemp("data") / "scenes", num_train=8, num_val=2, size=40, seed=1)


@pytest.fixture(scope="module")
def run(scenes, tmp_path_factory):
    """A 6-step micro run through ``fit``; reduce_zero_label and num_classes left to the dataset."""
    out = tmp_path_factory.mktemp("fit") / "run"
    cfg = micro_config(out, "segmentation", merge(RECIPE, seg={"data_root": str(scenes)}))
    assert cfg["seg"]["reduce_zero_label"] is None and cfg["seg"]["num_classes"] is None
    return out, train(cfg)


# --- (a) the schedule --------------------------------------------------------------------------------------

def _mmcv_poly(step, total, base, warmup, ratio, min_lr=0.0, power=1.0):
    """mmcv's PolyLrUpdaterHook.get_lr, then get_warmup_lr('linear') on that regular lr."""
    regular = (base - min_lr) * (1 - step / total) ** power + min_lr
    if step < warmup:
        k = (1 - step / warmup) * (1 - ratio)
        return regular * (1 - k)
    return regular


def test_poly_lr_matches_mmcv_and_decays_over_every_step():
    # hand-computed: T=100, W=10, base 1, warm-up ratio 0.1
    assert poly_lr_at(0, 100, 1.0, 10, 0.1) == pytest.approx(0.1)          # base * ratio
    assert poly_lr_at(5, 100, 1.0, 10, 0.1) == pytest.approx(0.95 * 0.55)
    assert poly_lr_at(9, 100, 1.0, 10, 0.1) == pytest.approx(0.91 * 0.91)
    assert poly_lr_at(10, 100, 1.0, 10, 0.1) == pytest.approx(0.9)         # not 1.0: the decay ran during warm-up
    assert poly_lr_at(55, 100, 1.0, 10, 0.1) == pytest.approx(0.45)
    assert poly_lr_at(99, 100, 1.0, 10, 0.1) == pytest.approx(0.01)
    assert poly_lr_at(100, 100, 1.0, 10, 0.1) == 0.0
    for step in (0, 1, 7, 19, 20, 21, 150, 299, 300):
        for min_lr, power in ((0.0, 1.0), (1e-4, 0.9), (1e-3, 2.0)):
            assert poly_lr_at(step, 300, 0.01, 20, 1e-6 * 0.01, min_lr, power) == pytest.approx(
                _mmcv_poly(step, 300, 0.01, 20, 1e-6, min_lr, power), rel=1e-12, abs=1e-15), (step, min_lr, power)
    after_warmup = [poly_lr_at(s, 100, 1.0, 10, 0.0) for s in range(10, 101)]
    assert all(a > b for a, b in zip(after_warmup, after_warmup[1:]))
    without_warmup = [poly_lr_at(s, 100, 1.0) for s in range(0, 101)]
    assert after_warmup == pytest.approx(without_warmup[10:])             # the warm-up only scales, never shifts
    assert make_config("segmentation", [])["sched"]["name"] == "poly"


def test_step_schedule_puts_the_poly_lr_times_lr_scale_on_every_group():
    w = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW([{"params": [w[0]], "lr_scale": 1.0}, {"params": [w[1]], "lr_scale": 10.0}], lr=1.0)
    sched = StepSchedule(opt, name="poly", base_lr=1e-3, total_steps=8, warmup_steps=2, warmup_lr=1e-4, min_lr=0.0)
    for step in range(8):
        assert opt.param_groups[0]["lr"] == pytest.approx(_mmcv_poly(step, 8, 1e-3, 2, 0.1))
        assert opt.param_groups[1]["lr"] == pytest.approx(10 * opt.param_groups[0]["lr"])
        sched.step()


# --- (b) what a run through fit leaves behind --------------------------------------------------------------

def _miou_percent(model, root, reduce_zero_label: bool) -> float:
    """mIoU (percent) of ``model`` on the validation split, areas summed over images (numpy, no vitlab metric)."""
    pre = model.pretrained_cfg
    val = SegmentationFolder(root, "validation", num_classes=model.num_classes, reduce_zero_label=reduce_zero_label,
                             mean=pre["mean"], std=pre["std"])
    k = model.num_classes
    inter, pred_area, label_area = np.zeros(k), np.zeros(k), np.zeros(k)
    model.eval()
    with torch.no_grad():
        for i in range(len(val)):
            img, label = val[i]
            pred = model(img[None]).argmax(1)[0].numpy()
            label = label.numpy()
            keep = label != 255
            p, t = pred[keep], label[keep]
            inter += np.bincount(t[p == t], minlength=k)
            pred_area += np.bincount(p, minlength=k)
            label_area += np.bincount(t, minlength=k)
    union = pred_area + label_area - inter
    return float(np.mean(100 * inter[union > 0] / union[union > 0]))


def test_fit_writes_a_complete_run_folder(run, scenes):
    out, summary = run
    saved = load_yaml(out / "config.yaml")
    assert saved["task"] == "segmentation"
    assert saved["seg"]["reduce_zero_label"] is True and saved["seg"]["num_classes"] == len(CLASS_NAMES)
    assert saved["sched"]["name"] == "poly" and saved["sched"]["steps"] == 6

    records = read_metrics(out)
    trains = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in trains] == [1, 2, 3, 4, 5, 6]
    for r in trains:
        parts = {k: v for k, v in r.items() if k.startswith("loss_")}
        assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"} <= set(parts)
        assert r["loss"] == pytest.approx(sum(parts.values()), rel=1e-5)     # the parts add up to the loss
        assert r["lr"] == pytest.approx(poly_lr_at(r["step"] - 1, 6, 5e-3, 2, 0.0, 0.0, 1.0))
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6]
    assert all(0.0 <= r["mIoU"] <= 100.0 and 0.0 <= r["aAcc"] <= 100.0 for r in evals)

    final = json.loads((out / "eval.json").read_text())
    assert evals[-1]["mIoU"] == final["mIoU"] == summary["mIoU"]
    assert evals[-1]["aAcc"] == final["aAcc"] == summary["aAcc"] and final["count"] == 2
    assert final["mIoU"] > 0 and final["aAcc"] > 1.0                        # not a fraction, and not vacuous
    assert set(final["per_class"]) == set(CLASS_NAMES)
    ious = [v["IoU"] for v in final["per_class"].values() if v["IoU"] is not None]
    assert final["mIoU"] == pytest.approx(sum(ious) / len(ious))
    summary_line = (out / "per_class.txt").read_text().strip().splitlines()[-1]
    assert summary_line == f"mIoU {final['mIoU']:.2f}  mAcc {final['mAcc']:.2f}  aAcc {final['aAcc']:.2f}"

    model_cfg = json.loads((out / "model" / "config.json").read_text())
    assert model_cfg["dataset"]["reduce_zero_label"] is True
    assert model_cfg["dataset"]["classes"] == list(CLASS_NAMES) and model_cfg["dataset"]["ignore_index"] == 255
    model = vitlab.from_pretrained(out / "model")
    assert model.dataset_info["reduce_zero_label"] is True and model.num_classes == len(CLASS_NAMES)
    # an independent recomputation from the saved weights: the reported mIoU is in percent
    assert _miou_percent(model, scenes, reduce_zero_label=True) == pytest.approx(final["mIoU"], abs=1e-9)

    overlays = sorted((out / "overlays").glob("*.png"))
    assert [p.stem for p in overlays] == sorted(p.stem for p in (scenes / "images" / "validation").iterdir())
    for p in overlays:
        picture = np.asarray(Image.open(p).convert("RGB"))
        assert picture.shape[1] > 2 * picture.shape[0] and picture.std() > 10   # three panels, titles, legend
    with Image.open(out / "curves.png") as curves:
        assert curves.width > 200 and curves.height > 100


# --- (c) segment eval of the run -----------------------------------------------------------------------------

def test_segment_eval_of_the_run_reproduces_its_final_miou(run, scenes, capsys):
    out, summary = run
    assert main(["segment", "eval", str(out), "--threads", "1", "--json"]) == 0
    again = _json_after_logs(capsys.readouterr().out)
    assert again["mIoU"] == summary["mIoU"] and again["aAcc"] == summary["aAcc"] and again["count"] == 2
    # the validation labels never use stored value 8, so they are also readable without the reduction
    stored = set()
    for p in (scenes / "annotations" / "validation").iterdir():
        stored |= set(np.unique(np.asarray(Image.open(p))).tolist())
    assert 0 in stored and 8 not in stored
    assert main(["segment", "eval", str(out), "--no-reduce-zero-label", "--threads", "1", "--json"]) == 0
    plain = _json_after_logs(capsys.readouterr().out)
    assert plain["mIoU"] != again["mIoU"] and plain["aAcc"] != again["aAcc"]


def test_folder_without_dataset_json(run, scenes, tmp_path, capsys):
    """Training needs --num-classes; eval of the run reads the folder with the run's reduce_zero_label (true)."""
    out, summary = run
    bare = shutil.copytree(scenes, tmp_path / "bare", ignore=shutil.ignore_patterns("dataset.json"))
    assert main(["segment", "train", "--data", str(bare), "--steps", "1", "--batch-size", "2", "--crop-size", "32",
                 "-o", str(tmp_path / "r"), "--threads", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitlab segment: error: ") and "--num-classes" in err and "\n" not in err
    assert main(["segment", "eval", str(out), "--data", str(bare), "--threads", "1", "--json"]) == 0
    res = _json_after_logs(capsys.readouterr().out)
    assert res["mIoU"] == summary["mIoU"] and set(res["per_class"]) == {str(c) for c in range(len(CLASS_NAMES))}
    assert main(["segment", "eval", str(out / "model"), "--data", str(bare), "--threads", "1", "--json"]) == 0
    assert _json_after_logs(capsys.readouterr().out)["mIoU"] == summary["mIoU"]     # model/config.json's setting


# --- (d), (e) the segment train CLI ---------------------------------------------------------------------------

def _cli_train(scenes) -> list[str]:
    return ["segment", "train", "--data", str(scenes), "--steps", "4", "--batch-size", "2", "--crop-size", "32",
            "--eval-interval", "2", "--overlays", "0", "--threads", "1", "--head-lr-mult", "10", "--warmup-steps",
            "1", "--lr", "1e-3", "--progress", "log", "--set", "run.log_every=1", "--set", "run.plots=false"]


@pytest.fixture(scope="module")
def stopped(scenes, tmp_path_factory):
    """``segment train --steps 4 --max-steps 2 --head-lr-mult 10``: a run that stopped half-way."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(_cli_train(scenes) + ["-o", str(out), "--max-steps", "2"]) == 0
    return out


def test_head_lr_mult_scales_the_decode_head_groups(stopped):
    state = load_state(stopped)
    assert state["step"] == 2
    groups = state["optimizer"]["param_groups"]
    assert {g["lr_scale"] for g in groups} == {1.0, 10.0}
    lr = poly_lr_at(2, 4, 1e-3, 1, 0.0)
    for g in groups:
        assert g["lr"] == pytest.approx(lr * g["lr_scale"])
    sizes = {i: s["exp_avg"].numel() for i, s in state["optimizer"]["state"].items()}
    numel = {scale: [sizes[i] for g in groups if g["lr_scale"] == scale for i in g["params"]] for scale in (1.0, 10.0)}
    params = dict(vitlab.from_pretrained(stopped / "model").named_parameters())
    head = [p.numel() for n, p in params.items() if n.startswith("decode_head.")]
    body = [p.numel() for n, p in params.items() if n.startswith("backbone.")]
    assert len(head) + len(body) == len(params)
    assert (len(numel[10.0]), sum(numel[10.0])) == (len(head), sum(head))     # every head tensor, nothing else
    assert (len(numel[1.0]), sum(numel[1.0])) == (len(body), sum(body))
    assert load_yaml(stopped / "config.yaml")["optim"]["lr_mult"] == {"decode_head": 10.0}


def test_segment_train_refuses_a_used_folder_and_resumes_past_max_steps(stopped, scenes, tmp_path, capsys):
    capsys.readouterr()
    assert json.loads((stopped / "final.json").read_text())["step"] == 2 and (stopped / "model").is_dir()
    assert main(_cli_train(scenes) + ["-o", str(stopped)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vitlab segment: error: ") and f"--resume {stopped}" in err and "\n" not in err
    resumed = shutil.copytree(stopped, tmp_path / "resumed")
    assert main(["segment", "train", "--resume", str(resumed), "--max-steps", "4", "--threads", "1"]) == 0
    assert f"resumed {resumed} at epoch 1, step 2" in capsys.readouterr().out
    assert load_state(resumed)["step"] == 4 and json.loads((resumed / "final.json").read_text())["step"] == 4
    straight = tmp_path / "straight"
    assert main(_cli_train(scenes) + ["-o", str(straight)]) == 0
    a, b = load_state(straight)["model"], load_state(resumed)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert read_metrics(resumed) == read_metrics(straight)


# --- (f) learning -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_micro_segvit_learns_texture_scenes(tmp_path):
    """About 2 CPU-minutes (one thread): 1000 steps of segvit_micro reach mIoU 48% (chance is ~7%)."""
    root = write_texture_scenes(tmp_path / "scenes")
    cfg = make_config("segmentation", [("test", {
        "seg": {"data_root": str(root), "overlays": 0},
        "sched": {"steps": 1000, "warmup_steps": 50},
        "run": {"eval_every_steps": 0, "threads": 1, "output": str(tmp_path / "run"), "progress": "log",
                "plots": False}})])
    result = train(cfg)
    assert result["step"] == 1000
    assert result["mIoU"] > 35.0 and result["aAcc"] > 50.0 and math.isfinite(result["mAcc"])


@pytest.mark.parametrize("name", ["segvit_micro", "upernet_micro", "semantic_fpn_micro", "mask_rcnn_micro",
                                  "topdown_micro"])
def test_drop_path_reaches_the_segmentors_encoder(name):
    """model.drop_path sets the encoder's stochastic depth of every wrapper family (segmentors raised a TypeError)."""
    import vitlab
    from vitlab.models.registry import with_drop_path
    model = vitlab.create_model(name, **with_drop_path(name, {}, 0.3))
    rates = [m.drop_prob for m in model.backbone.modules() if hasattr(m, "drop_prob")]
    assert rates and max(rates) == pytest.approx(0.3, abs=0.05)

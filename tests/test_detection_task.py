"""Detection and pose on the engine, through the command line: run folders, COCO evaluation, prediction pictures."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pycocotools")
pytest.importorskip("skimage", reason="the synthetic sets cut their textures from scikit-image's images")

from vitlab.cli.main import main  # noqa: E402


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    from vitlab.data.synthetic_coco import write_synthetic_instances, write_synthetic_keypoints
    root = tmp_path_factory.mktemp("coco")
    return (write_synthetic_instances(root / "instances", num_train=6, num_val=3, size=128, seed=1),
            write_synthetic_keypoints(root / "keypoints", num_train=6, num_val=3, size=128, seed=1))


def _json_tail(text: str):
    return json.loads(text[text.index("\n{") + 1:] if not text.startswith("{") else text)


def test_detect_train_eval_predict(sets, tmp_path, capsys):
    instances, _ = sets
    run = tmp_path / "run"
    args = ["detect", "train", "--data-root", str(instances), "--max-steps", "3", "--batch-size", "2",
            "--train-scales", "128", "--img-size", "128", "--set", "det.max_size=160", "--threads", "1",
            "--log-every", "1", "--visualize", "1", "-o", str(run), "--json"]
    assert main(args) == 0
    summary = _json_tail(capsys.readouterr().out)
    for name in ("config.yaml", "metrics.jsonl", "last.pth", "model", "results_bbox.json", "coco_eval.txt",
                 "curves.png", "final.json"):
        assert (run / name).exists(), name
    assert 0.0 <= summary["bbox_AP50"] <= 100.0 and "segm_AP" in summary
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    assert {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"} <= set(train[0])
    assert "Average Precision" in (run / "coco_eval.txt").read_text()
    [png] = list((run / "predictions").glob("*.png"))
    with Image.open(png) as im:
        assert min(im.size) >= 480 and np.asarray(im).std() > 5          # enlarged so the labels stay legible

    capsys.readouterr()
    assert main(["detect", "eval", str(run), "--json", "--threads", "1"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["bbox_AP50"] == pytest.approx(summary["bbox_AP50"]) and again["images"] == 3

    assert main(["detect", "predict", str(run), str(instances / "images" / "val"), "-o", str(tmp_path / "pred"),
                 "--json", "--score-thr", "0"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 3 and len(list((tmp_path / "pred").glob("*.png"))) == 3
    assert main(["detect", "train", "--data-root", str(instances), "-o", str(run)]) == 2   # the folder is taken


def test_pose_train_eval_predict(sets, tmp_path, capsys):
    _, keypoints = sets
    run = tmp_path / "pose"
    assert main(["pose", "train", "--data-root", str(keypoints), "--max-steps", "3", "--batch-size", "4",
                 "--set", "pose.input_size=[64,64]", "--set", "pose.heatmap_size=[16,16]", "--set", "pose.sigma=1.0",
                 "--threads", "1", "--visualize", "1", "-o", str(run), "--json"]) == 0
    summary = _json_tail(capsys.readouterr().out)
    assert 0.0 <= summary["AP"] <= 100.0 and summary["people"] > 0
    assert (run / "results_keypoints.json").is_file() and len(list((run / "predictions").glob("*.png"))) == 1
    capsys.readouterr()
    assert main(["pose", "eval", str(run), "--json", "--threads", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["AP"] == pytest.approx(summary["AP"])
    assert main(["pose", "eval", str(run), "--visualize", "1"]) == 2                  # drawings need --output
    assert main(["pose", "eval", str(run), "--visualize", "1", "-o", str(tmp_path / "pe"), "--threads", "1"]) == 0
    assert len(list((tmp_path / "pe" / "predictions").glob("*.png"))) == 1
    capsys.readouterr()
    image = next((keypoints / "images" / "val").glob("*.png"))
    assert main(["pose", "predict", str(run), str(image), "-o", str(tmp_path / "pp"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and np.array(rows[0]["people"]).shape == (1, 17, 3)

    # person boxes from `detect predict --json`: one image with two people, one with none, one not listed
    others = sorted((keypoints / "images" / "val").glob("*.png"))[1:3]
    boxes = tmp_path / "boxes.json"
    boxes.write_text(json.dumps([
        {"image": str(image), "detections": [{"label": "person", "score": 0.9, "box": [0, 0, 60, 120]},
                                             {"label": "person", "score": 0.8, "box": [60, 0, 128, 128]},
                                             {"label": "car", "score": 0.9, "box": [0, 0, 10, 10]}]},
        {"image": str(others[0]), "detections": [{"label": "car", "score": 0.9, "box": [0, 0, 10, 10]}]}]))
    assert main(["pose", "predict", str(run), str(image), *map(str, others), "--boxes", str(boxes),
                 "-o", str(tmp_path / "pb"), "--json"]) == 0
    out = capsys.readouterr()
    rows = {r["image"]: r for r in json.loads(out.out)}                       # the notes go to stderr
    assert "skipped (not listed in --boxes" in out.err
    assert np.array(rows[str(image)]["people"]).shape == (2, 17, 3)          # the car box is not a person
    assert rows[str(others[0])]["skipped"] == "no person box" and rows[str(others[1])]["skipped"] == "not listed"
    assert sorted(p.name for p in (tmp_path / "pb").glob("*.png")) == [image.name]
    (tmp_path / "bad.json").write_text('{"image": 1}')
    assert main(["pose", "predict", str(run), str(image), "--boxes", str(tmp_path / "bad.json"),
                 "-o", str(tmp_path / "pc")]) == 2
    assert "expected the JSON that `vitlab detect predict --json` prints" in capsys.readouterr().err


def test_backbone_weights_load_strictly(tmp_path):
    """An ImageNet checkpoint of the same variant initialises the detector's backbone; another variant's is refused."""
    import torch
    import vitlab
    from vitlab.checkpoints.load import CheckpointError
    from vitlab.tasks.detection import load_initial_weights
    torch.manual_seed(0)
    classifier = vitlab.create_model("uniformer_micro", num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "micro.pth")
    detector = vitlab.create_model("mask_rcnn_micro", num_classes=3)
    lines = []
    load_initial_weights(detector, None, str(tmp_path / "micro.pth"), lines.append)
    first = next(k for k in classifier.state_dict() if k.endswith("weight") and "head" not in k)
    assert torch.equal(detector.backbone.state_dict()[first], classifier.state_dict()[first])
    assert "backbone initialised from" in lines[0]
    torch.save(vitlab.create_model("uniformer_small").state_dict(), tmp_path / "small.pth")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_initial_weights(detector, None, str(tmp_path / "small.pth"), lines.append)

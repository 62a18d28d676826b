"""Every recipe in configs/ composes against its task's typed sections and builds its model (meta device)."""
from pathlib import Path

import pytest

from vitlab.engine.config import load_yaml
from vitlab.models.registry import build_without_weights
from vitlab.tasks import make_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.relative_to(p.parents[1]).as_posix() for p in CONFIGS])
def test_recipe_composes_and_its_model_builds(path):
    layer = load_yaml(path)
    cfg = make_config(layer.get("task", "classification"), [(str(path), layer)])
    assert cfg["task"] in ("classification", "video", "segmentation", "pretraining", "detection", "pose")
    kwargs = dict(cfg["model"]["kwargs"])
    if cfg["task"] == "detection":      # the heads are sized from the data: COCO's 80 classes here
        kwargs.update(num_classes=80)
    if cfg["task"] == "pose":
        kwargs.update(num_keypoints=17, input_size=cfg["pose"]["input_size"])
        assert [s // 4 for s in cfg["pose"]["input_size"]] == cfg["pose"]["heatmap_size"]
    if cfg["task"] == "pretraining":
        kwargs.update(num_classes=0, img_size=cfg["esvit"]["global_size"])
    assert sum(p.numel() for p in build_without_weights(cfg["model"]["name"], **kwargs).parameters()) > 0

"""The dataset/task registry behind ``vitlab train --data/--task``."""
from __future__ import annotations

import numpy as np
import pytest

from vitlab.cli.main import main as vitlab_main
from vitlab.data.registry import (DataRequest, DatasetBundle, build_dataset, get_task, list_datasets, list_tasks,
                                  parse_data_spec, register_dataset, register_task)


def test_builtin_names_and_specs(tmp_path):
    assert {"animal-mnist", "digits", "folder"} <= set(list_datasets())
    assert "classification" in list_tasks()
    assert parse_data_spec("digits") == ("digits", None)
    assert parse_data_spec(f"folder:{tmp_path}") == ("folder", str(tmp_path))
    assert parse_data_spec(str(tmp_path)) == ("folder", str(tmp_path))
    with pytest.raises(KeyError, match="unknown dataset 'digitz'; did you mean digits"):
        parse_data_spec("digitz")
    with pytest.raises(KeyError, match="unknown task 'segmentaton'"):
        get_task("segmentaton")


def test_builtin_split_is_clean_and_reported():
    bundle = build_dataset(DataRequest("digits", options={"held_out": 300}))
    assert len(bundle.val) == 300 and len(bundle.train) == 1797 - 300 and bundle.in_chans == 1
    assert "duplicates_moved_to_train" in bundle.info
    val = {bundle.val.images[i].tobytes() for i in range(len(bundle.val))}
    train = {bundle.train.images[i].tobytes() for i in range(len(bundle.train))}
    assert not val & train


def test_a_registered_task_receives_the_merged_config(tmp_path):
    seen = {}
    register_task("test-task", train=lambda cfg: seen.setdefault("cfg", cfg) and 0,
                  defaults={"data": {"name": "test-clips"}})
    assert vitlab_main(["train", "--task", "test-task", "--epochs", "3", "--output", str(tmp_path)]) == 0
    cfg = seen["cfg"]
    assert cfg["task"] == "test-task" and cfg["data"]["name"] == "test-clips" and cfg["sched"]["epochs"] == 3


def test_a_registered_dataset_builder_gets_the_request():
    calls = []

    def build(req):
        calls.append(req)
        x = np.zeros((4, 8, 8), np.uint8)
        from vitlab.data.datasets import ArrayDataset
        return DatasetBundle(train=ArrayDataset(x, np.arange(4) % 2, 2), val=None, class_names=["a", "b"],
                             input_kind="video")
    register_dataset("test-clips", build, input_kind="video")
    bundle = build_dataset(DataRequest("test-clips", root="somewhere", input_size=(3, 8, 32, 32),
                                       options={"frames": 8}))
    assert bundle.input_kind == "video" and bundle.num_classes == 2
    assert calls[0].root == "somewhere" and calls[0].options == {"frames": 8}
    with pytest.raises(ValueError, match="input_kind must be one of"):
        DatasetBundle(train=None, val=None, class_names=["a"], input_kind="audio")

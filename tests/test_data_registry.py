"""The dataset table and the task list behind ``vitlab train --data/--task``: explicit, no import side effects."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vitlab.data.registry import (BUILTIN_DATASETS, DataRequest, DatasetBundle, build_dataset, list_datasets,
                                  parse_data_spec, register_dataset)
from vitlab.errors import ConfigError


def test_builtin_names_and_specs(tmp_path):
    assert {"animal-mnist", "digits", "folder", "images", "video-folder", "synthetic-video"} <= set(list_datasets())
    assert parse_data_spec("digits") == ("digits", None)
    assert parse_data_spec(f"folder:{tmp_path}") == ("folder", str(tmp_path))
    assert parse_data_spec(f"images:{tmp_path}") == ("images", str(tmp_path))
    assert parse_data_spec(str(tmp_path)) == ("folder", str(tmp_path))
    with pytest.raises(KeyError, match="unknown dataset 'digitz'; did you mean digits"):
        parse_data_spec("digitz")


def test_the_task_list_is_explicit():
    from vitlab.tasks import TASKS, list_tasks, task_class
    assert list_tasks() == ["classification", "detection", "pose", "pretraining", "segmentation", "video"] \
        == sorted(TASKS)
    assert task_class("video").name == "video" and task_class("segmentation").monitor == "mIoU"
    with pytest.raises(ConfigError, match="unknown task 'segmentaton'; did you mean segmentation"):
        task_class("segmentaton")


def test_looking_up_a_dataset_imports_only_its_module():
    code = ("import sys; from vitlab.data.registry import get_dataset_entry; get_dataset_entry('digits'); "
            "print(sorted(m for m in sys.modules if m.startswith('vitlab.data.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "vitlab.data.builtin_sets" in out and "vitlab.data.video" not in out and "vitlab.data.synthetic_video" not in out
    assert set(BUILTIN_DATASETS["video-folder"][:2]) == {"vitlab.data.video", "build_video_folder"}


def test_builtin_split_is_clean_and_reported():
    bundle = build_dataset(DataRequest("digits", options={"held_out": 300}))
    assert len(bundle.val) == 300 and len(bundle.train) == 1797 - 300 and bundle.in_chans == 1
    assert "duplicates_moved_to_train" in bundle.info and bundle.labelled
    val = {bundle.val.images[i].tobytes() for i in range(len(bundle.val))}
    train = {bundle.train.images[i].tobytes() for i in range(len(bundle.train))}
    assert not val & train


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
    with pytest.raises(ValueError, match="'digits' is built in"):
        register_dataset("digits", build)

"""End to end: ``vitlab train --task video`` learns the synthetic motion set; ``vitlab eval --task video`` multi-view."""
import json

import pytest

pytest.importorskip("av")

from vitlab.cli.main import main  # noqa: E402
from vitlab.data.synthetic_video import CLASSES  # noqa: E402
from vitlab.engine.config import load_yaml  # noqa: E402

VAL_VIDEOS = 6 * 16  # the video task's defaults: 8 epochs over 6 x 48 synthetic videos, 6 x 16 held out


def _json_after_logs(text: str) -> dict:
    """The JSON object a ``--json`` command prints after its log lines."""
    return json.loads(text[0 if text.startswith("{") else text.index("\n{\n") + 1:])


@pytest.mark.slow
def test_video_micro_learns_synthetic_motion(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code = main(["train", "--task", "video", "--img-size", "32", "--threads", "2", "--output", str(run),
                 "--progress", "log", "--json"])
    assert code == 0
    result = _json_after_logs(capsys.readouterr().out)
    assert result["task"] == "video" and result["top1"] > 60.0  # six classes: chance is 16.7%
    assert (run / "model" / "config.json").is_file() and load_yaml(run / "config.yaml")["task"] == "video"

    code = main(["eval", "--task", "video", "--model", str(run), "--set", "data.options.test_clips=2",
                 "--set", "data.options.test_crops=3", "--threads", "2", "--json"])
    assert code == 0
    res = _json_after_logs(capsys.readouterr().out)
    assert res["count"] == VAL_VIDEOS and res["top1"] > 60.0  # 2 clips x 3 crops per video, one score each
    assert res["class_names"] == sorted(CLASSES)                # the class folders, in name order

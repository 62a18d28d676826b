"""End to end: ``vitlab train --task video`` learns the synthetic motion set; ``vitlab eval --task video`` multi-view."""
import json

import pytest

pytest.importorskip("av")

from vitlab.cli.main import main  # noqa: E402


@pytest.mark.slow
def test_video_micro_learns_synthetic_motion(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    code = main(["train", "--task", "video", "--img-size", "32", "--threads", "2",
                 "--output", str(run), "--progress", "log", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    result = json.loads(out[out.index("{"):])
    assert result["top1"] > 60.0  # six classes: chance is 16.7%
    assert (run / "model" / "config.json").is_file()

    code = main(["eval", "--task", "video", "--model", str(run), "--set", "data.options.test_clips=2",
                 "--set", "data.options.test_crops=3", "--threads", "2", "--json"])
    assert code == 0
    out = capsys.readouterr().out
    res = json.loads(out[out.index("{"):])
    assert res["count"] == 96 and res["top1"] > 60.0

"""Nothing written is lost: atomic files, full disks and read-only folders, strict JSON, torn metrics lines,
run-folder locks, and clear errors for bad model input."""
from __future__ import annotations

import errno
import json
import os

import pytest
import torch

import vitlab
from vitlab.checkpoints.atomic import atomic_torch_save, atomic_write_json, atomic_write_text, to_json
from vitlab.engine.metrics import MetricsLog, read_records
from vitlab.engine.run_folder import LOCK_NAME, claim_run_folder
from vitlab.errors import DataError, RunFolderError, WriteError


def test_a_failed_write_keeps_the_previous_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "last.pth"
    atomic_torch_save({"step": 1}, target)
    before = target.read_bytes()

    def full_disk(obj, path):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(WriteError, match="cannot write .*last.pth: no space left on device; nothing was changed"):
        atomic_torch_save({"step": 2}, target)
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_a_read_only_folder_is_one_clear_line(tmp_path, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(WriteError, match="read-only file system"):
        atomic_write_text(tmp_path / "x.txt", "hello")
    assert not (tmp_path / "x.txt").exists()


def test_written_files_get_the_mode_open_gives_not_the_temporary_0600(tmp_path):
    import stat
    umask = os.umask(0o022)
    try:
        import importlib

        import vitlab.checkpoints.atomic as atomic
        atomic = importlib.reload(atomic)       # it reads the umask once, at import
        atomic.atomic_write_text(tmp_path / "a.txt", "x")
        atomic.atomic_torch_save({"w": torch.zeros(1)}, tmp_path / "b.pth")
        for name in ("a.txt", "b.pth"):
            assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    finally:
        os.umask(umask)
        importlib.reload(atomic)


def test_json_has_no_bare_nan(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"mIoU": float("nan"), "per_class": [1.0, float("inf")], "ok": 2})
    text = (tmp_path / "r.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"mIoU": None, "per_class": [1.0, None], "ok": 2}
    assert to_json({"a": float("-inf")}) == '{"a": null}'


def test_metrics_log_tolerates_a_torn_last_line_and_truncates_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in (1, 2, 3):
        log.write({"kind": "train", "step": step, "loss": float("nan") if step == 2 else 0.5})
    log.close()
    with open(path, "a") as f:
        f.write('{"kind": "train", "step": 4, "lo')                 # a crash in the middle of a write
    records = read_records(path)
    assert [r["step"] for r in records] == [1, 2, 3] and records[1]["loss"] is None
    MetricsLog(path, resume_step=2).close()                          # resumed from the step-2 checkpoint
    assert [r["step"] for r in read_records(path)] == [1, 2]
    path.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(DataError, match=r"metrics.jsonl:2: not a JSON record"):
        read_records(path)


def test_run_folder_claims_refusals_and_stale_locks(tmp_path):
    run = tmp_path / "run"
    with claim_run_folder(run) as folder:                            # a new folder
        assert (run / LOCK_NAME).read_text().startswith(f"{os.getpid()}@")
        with pytest.raises(RunFolderError, match="in use by process"):
            claim_run_folder(run, resume=True)                       # a second writer while the first runs
        (folder.path / "config.yaml").write_text("task: classification\n")
    assert not (run / LOCK_NAME).exists()
    with pytest.raises(RunFolderError, match="already holds files \\(config.yaml\\): pass --resume"):
        claim_run_folder(run)
    (run / LOCK_NAME).write_text("999999999@" + __import__("socket").gethostname() + "\n")   # a killed run's lock
    with claim_run_folder(run, resume=True):
        assert (run / "config.yaml").exists()
    with claim_run_folder(run, overwrite=True):
        assert not (run / "config.yaml").exists()                    # --overwrite replaces the contents
    with pytest.raises(RunFolderError, match="holds no run to continue"):
        claim_run_folder(tmp_path / "empty", resume=True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunFolderError, match="is a file, not a folder"):
        claim_run_folder(tmp_path / "file")


@pytest.mark.parametrize("name", ["volo_micro", "pale_micro", "uniformer_micro", "swin_micro", "vit_micro",
                                  "segvit_micro", "uniformer_video_micro"])
def test_empty_batches_and_wrong_dtypes_are_clear_errors(name):
    model = vitlab.create_model(name).eval()
    shape = tuple(model.pretrained_cfg["input_size"])
    with pytest.raises(ValueError, match="empty batch \\(0 images"):
        model(torch.zeros(0, *shape))
    with pytest.raises(TypeError, match="float32 weights but got a torch.float16 input"):
        model(torch.zeros(1, *shape, dtype=torch.float16))
    with torch.autocast("cpu", dtype=torch.bfloat16):                 # under autocast the dtypes may differ
        assert torch.isfinite(model(torch.zeros(1, *shape, dtype=torch.bfloat16)).float()).all()

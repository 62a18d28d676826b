"""Segmentation training loop: exact resume, and (slow) a micro SegViT learning the built-in set."""
import pytest
import torch

pytest.importorskip("skimage", reason="the built-in set cuts its textures from scikit-image's bundled images")

import vitlab  # noqa: E402
from vitlab.data.synthetic_scenes import write_texture_scenes  # noqa: E402
from vitlab.segmentation.train import poly_lr, train  # noqa: E402


def test_poly_schedule():
    assert poly_lr(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert poly_lr(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert poly_lr(55, 100, 1.0, 10) == pytest.approx(0.5)
    assert poly_lr(100, 100, 1.0, 10) == 0.0


def test_resume_continues_exactly(tmp_path):
    root = write_texture_scenes(tmp_path / "scenes", num_train=6, num_val=1, size=48, seed=2)
    common = dict(data=str(root), reduce_zero_label=True, iters=4, batch_size=2, crop_size=32, eval_interval=2,
                  warmup_iters=1, overlays=0, lr=3e-3)
    train({**common, "out": str(tmp_path / "straight")}, progress=False)
    assert train({**common, "out": str(tmp_path / "chunked"), "stop_after": 2}, progress=False) is None
    train({**common, "out": str(tmp_path / "chunked"), "resume": True}, progress=False)
    a = vitlab.from_pretrained(tmp_path / "straight" / "model").state_dict()
    b = vitlab.from_pretrained(tmp_path / "chunked" / "model").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.slow
def test_micro_segvit_learns_texture_scenes(tmp_path):
    """~100 CPU-seconds (one thread): 1000 iterations of segvit_micro reach mIoU far above chance (~0.07)."""
    root = write_texture_scenes(tmp_path / "scenes")
    result = train(dict(data=str(root), reduce_zero_label=True, iters=1000, warmup_iters=50, eval_interval=1000,
                        threads=1, out=str(tmp_path / "run"), overlays=0), progress=False)
    assert result["mIoU"] > 0.35 and result["aAcc"] > 0.5


def test_train_task_segmentation(tmp_path, capsys):
    from vitlab.data.registry import get_task
    from vitlab.segmentation.task import to_segmentation_config
    root = write_texture_scenes(tmp_path / "scenes", num_train=4, num_val=1, size=48, seed=3)
    config = {"task": "segmentation", "model": {"name": "segvit_micro", "kwargs": {}},
              "data": {"name": "texture-scenes", "root": str(root), "batch_size": 2, "options": {"crop_size": 32,
                                                                                                  "overlays": 0}},
              "optim": {"lr": 1e-3}, "sched": {"max_steps": 2}, "run": {"output": str(tmp_path / "run"),
                                                                       "progress": "log"}}
    assert to_segmentation_config(config)["iters"] == 2
    assert get_task("segmentation").train(config) == 0
    assert "mIoU" in capsys.readouterr().out and (tmp_path / "run" / "model" / "config.json").is_file()
    assert len(list((root / "images" / "training").iterdir())) == 4  # the existing set was used, not rewritten

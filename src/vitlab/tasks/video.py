"""Video classification: the classification recipe on clips (B, 3, T, H, W) (UniFormer video).

Data: ``synthetic-video`` (built in) or ``video-folder:PATH`` (PyAV decoding, dense or uniform frame
sampling, scale-jitter crops); evaluation averages the softmax of ``test_clips`` x ``test_crops``
views per video (``data.options``). Everything else is :class:`~vitlab.tasks.classification.ClassificationTask`.
"""
from __future__ import annotations

from .classification import ClassificationTask


class VideoTask(ClassificationTask):
    name = "video"
    help = "video classification: clips from video-folder or synthetic-video, multi-view testing"
    defaults = {
        "model": {"name": "uniformer_video_micro"},
        "data": {"name": "synthetic-video", "batch_size": 16, "eval_batch_size": 16},
        "aug": {"hflip": 0.0, "smoothing": 0.1},
        "optim": {"lr": 2e-3, "weight_decay": 0.05},
        "sched": {"epochs": 8, "warmup_epochs": 1.0},
    }

    def describe(self, session) -> str:
        b, r = self.bundle, self.resolved
        n = sum(p.numel() for p in self.model.parameters())
        return (f"model {session.cfg['model']['name']}: {n / 1e6:.3f}M params, clips of {b.info.get('num_frames')} "
                f"frames at {r['img_size']} px; data {session.cfg['data']['name']}: {len(b.train)} train / "
                f"{len(b.val) if b.val is not None else 0} held-out videos, {b.num_classes} classes, "
                f"{b.info.get('views', 1)} test view(s) per video")

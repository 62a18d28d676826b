"""PNG figures of a run: learning curves from ``metrics.jsonl`` and a confusion matrix.

The curves show the loss (per-step records, per-epoch means and evaluation losses), the learning
rate and the task's evaluation metric against the optimizer step, so a run shorter than
``run.log_every`` still draws its per-epoch values. Every figure carries the run's name.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitlab.checkpoints.atomic import atomic_write

METRIC_LABELS = {"top1": "held-out top-1 (%)", "mIoU": "val mIoU (%)", "knn_top1": "k-NN top-1 (%)"}


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path) -> None:
    plt = _plt()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def _series(records: list[dict], kind: str, key: str) -> tuple[list, list]:
    rows = [r for r in records if r.get("kind") == kind and isinstance(r.get(key), (int, float))]
    return [r["step"] for r in rows], [r[key] for r in rows]


def _loss_panel(ax, records: list[dict]) -> None:
    steps, loss = _series(records, "train", "loss")
    if steps:
        ax.plot(steps, loss, lw=1.2, label="train (per log window)")
    steps, loss = _series(records, "epoch", "train_loss")
    if steps:
        ax.plot(steps, loss, "o--" if len(steps) <= 25 else "--", ms=4, lw=1, label="train (epoch mean)")
    steps, loss = _series(records, "eval", "loss")
    if steps:
        ax.plot(steps, loss, "s-", ms=4, label="evaluation (plain cross-entropy)")
    ax.set_title("loss")
    if ax.lines:
        ax.legend(fontsize=8)


def _lr_panel(ax, records: list[dict]) -> None:
    steps, lr = _series(records, "train", "lr")
    if steps:
        ax.plot(steps, lr, lw=1.2, label="per log window")
    e_steps, e_lr = _series(records, "epoch", "lr")
    if e_steps and (len(e_steps) <= 25 or not steps):
        ax.plot(e_steps, e_lr, "o" if len(e_steps) <= 25 else "-", ms=4, label="last step of each epoch")
    ax.set_title("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    if ax.lines:
        ax.legend(fontsize=8)


def _metric_panel(ax, records: list[dict], metric: str | None) -> None:
    label = METRIC_LABELS.get(metric, metric or "evaluation")
    ax.set_title(label)
    if not metric:
        ax.text(0.5, 0.5, "this task reports no metric", ha="center", va="center", transform=ax.transAxes)
        return
    steps, values = _series(records, "eval", metric)
    if steps:
        ax.plot(steps, values, "o-", ms=4, label=metric)
        for x, y in zip(steps[-1:], values[-1:]):
            ax.annotate(f"{y:.2f}", (x, y), textcoords="offset points", xytext=(-34, 6), fontsize=8)
    e_steps, e_values = _series(records, "eval", f"ema_{metric}")
    if e_steps:
        ax.plot(e_steps, e_values, "s--", ms=4, label=f"EMA {metric}")
    if ax.lines:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax.transAxes)


def plot_curves(records: list[dict], path: str | Path, title: str = "", metric: str | None = "top1") -> None:
    """Loss, learning rate and ``metric`` against the optimizer step (see the module docstring)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    _loss_panel(axes[0], records)
    _lr_panel(axes[1], records)
    _metric_panel(axes[2], records, metric)
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    _save(fig, path)


def plot_confusion(matrix, class_names: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix (share of each true class) with a colour bar and the counts."""
    plt = _plt()
    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(class_names)
    side = float(np.clip(2.5 + 0.55 * k, 5.0, 16.0))
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("share of the true class")
    font = 10 if k <= 10 else (8 if k <= 30 else 6)
    if k <= 60:
        ax.set_xticks(range(k), class_names, rotation=60 if max(map(len, class_names)) > 3 else 0,
                      ha="right" if max(map(len, class_names)) > 3 else "center", fontsize=font)
        ax.set_yticks(range(k), class_names, fontsize=font)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=font - 1,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class" + ("  (cells: image counts)" if k <= 30 else ""))
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix", fontsize=11)
    fig.tight_layout()
    _save(fig, path)

"""PNG plots of a run: loss / learning rate / accuracy curves from ``metrics.jsonl``, and a confusion matrix."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vitlab.checkpoints.atomic import atomic_write


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_curves(records: list[dict], path: str | Path) -> None:
    plt = _plt()
    train = [r for r in records if r.get("kind") == "train"]
    evals = [r for r in records if r.get("kind") == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    if train:
        steps = [r["step"] for r in train]
        axes[0].plot(steps, [r["loss"] for r in train], label="train loss")
        axes[1].plot(steps, [r["lr"] for r in train])
    if evals:
        axes[0].plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
        axes[2].plot([r["step"] for r in evals], [r["top1"] for r in evals], "o-", label="top-1")
        if any("ema_top1" in r for r in evals):
            axes[2].plot([r["step"] for r in evals if "ema_top1" in r],
                         [r["ema_top1"] for r in evals if "ema_top1" in r], "s--", label="EMA top-1")
    for ax, title in zip(axes, ("loss", "learning rate", "held-out accuracy (%)")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    if evals:
        axes[2].legend()
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> None:
    plt = _plt()
    m = np.asarray(matrix, dtype=np.float64)
    norm = m / np.maximum(m.sum(1, keepdims=True), 1)
    k = len(class_names)
    size = min(14, 2 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
        ax.set_yticks(range(k), class_names, fontsize=8)
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)

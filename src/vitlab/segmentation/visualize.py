"""Coloured segmentation overlays: image | prediction | ground truth, with titles and a class legend (PNG)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


def palette(num_classes: int, seed: int = 3) -> np.ndarray:
    """A fixed (num_classes, 3) uint8 colour table (distinct, reproducible); ignore pixels draw black."""
    rng = np.random.default_rng(seed)
    base = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                     [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128], [220, 190, 255],
                     [170, 110, 40], [255, 250, 200], [128, 0, 0], [170, 255, 195]], dtype=np.uint8)
    if num_classes <= len(base):
        return base[:num_classes]
    return np.concatenate([base, rng.integers(0, 256, (num_classes - len(base), 3), dtype=np.uint8)])


def colorize(label: np.ndarray, colors: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W) class map -> (H, W, 3) colours; ignored or out-of-range pixels are black."""
    out = np.zeros((*label.shape, 3), np.uint8)
    valid = (label != ignore_index) & (label >= 0) & (label < len(colors))
    out[valid] = colors[label[valid]]
    return out


def overlay_panel(image: torch.Tensor | np.ndarray, pred, label=None, num_classes: int | None = None,
                  alpha: float = 0.5, ignore_index: int = 255) -> np.ndarray:
    """Side-by-side uint8 panel: the image, the prediction blended over it, and (if given) the labels."""
    img = image.permute(1, 2, 0).cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    img = img.astype(np.float32)
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    k = num_classes or int(pred.max()) + 1
    colors = palette(k)
    panels = [img, (1 - alpha) * img + alpha * colorize(pred, colors, ignore_index)]
    if label is not None:
        label = label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label)
        panels.append((1 - alpha) * img + alpha * colorize(label, colors, ignore_index))
    gap = np.full((img.shape[0], 4, 3), 255, np.float32)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1).clip(0, 255).astype(np.uint8)


def save_overlay(path: str | Path, image, pred, label=None, num_classes: int | None = None,
                 class_names: list[str] | None = None, title: str = "", ignore_index: int = 255) -> Path:
    """One PNG: the image, the prediction over it and (if given) the ground truth, with panel titles and a
    legend of the classes that appear (colour patch + name); ignored pixels are black."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    from vitlab.checkpoints.atomic import atomic_write
    img = image.permute(1, 2, 0).cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    pred = pred.cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
    label = None if label is None else (label.cpu().numpy() if isinstance(label, torch.Tensor) else np.asarray(label))
    k = num_classes or int(max(pred.max(), 0 if label is None else label[label != ignore_index].max(initial=0))) + 1
    names = list(class_names or [str(c) for c in range(k)])
    colors = palette(k)
    blend = lambda m: (0.45 * img.astype(np.float32) + 0.55 * colorize(m, colors, ignore_index)).astype(np.uint8)  # noqa: E731
    panels = [("image", img), ("prediction", blend(pred))]
    if label is not None:
        correct = (pred == label)[label != ignore_index]
        panels.append((f"ground truth (pixel accuracy {100 * correct.mean():.1f}%)" if correct.size else "ground truth",
                       blend(label)))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels) + 2.2, 4.0))
    for ax, (name, picture) in zip(np.atleast_1d(axes), panels):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    present = sorted(set(np.unique(pred).tolist()) | (set() if label is None else set(np.unique(label).tolist())))
    handles = [Patch(color=colors[c] / 255.0, label=names[c]) for c in present if 0 <= c < k]
    if label is not None and (label == ignore_index).any():
        handles.append(Patch(color="black", label="ignored"))
    fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False, title="classes")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (3.6 * len(panels) + 2.2), 1))
    path = Path(path)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
    return path

"""Pictures of what a self-supervised Swin learned (EsViT, arXiv 2106.09785, Fig. 1 / Sec. 5).

* :func:`region_correspondence_figure`: two augmented views of one image side by side, with lines
  joining the ``top`` most cosine-similar pairs of final-stage region features (the matches the
  region loss L_R is built on).
* :func:`attention_figure`: for each head of the last block, the attention every token receives
  (mean over the queries of its window), upsampled over the input image.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from vitlab.attention.window import window_reverse
from vitlab.checkpoints.atomic import atomic_write


def _to_display(x: torch.Tensor, mean, std) -> torch.Tensor:
    """(C, H, W) normalised image -> (H, W, C) in [0, 1] for matplotlib."""
    c = x.shape[0]
    m = torch.tensor(mean if len(mean) == c else [sum(mean) / len(mean)] * c).view(-1, 1, 1)
    s = torch.tensor(std if len(std) == c else [sum(std) / len(std)] * c).view(-1, 1, 1)
    img = (x.detach().cpu() * s + m).clamp(0, 1).permute(1, 2, 0)
    return (img.expand(-1, -1, 3) if c == 1 else img).numpy()


def _save(fig, path) -> None:
    import matplotlib.pyplot as plt
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, bbox_inches="tight", format="png"))
    plt.close(fig)


@torch.no_grad()
def region_matches(backbone, view_a: torch.Tensor, view_b: torch.Tensor, top: int = 10):
    """Top-``top`` (index_a, index_b, similarity) region pairs between two views (1, C, H, W) and the grids."""
    from vitlab.ssl.region_tokens import split_features
    backbone.eval()
    (_, fa, ga), (_, fb, gb) = split_features(backbone, view_a), split_features(backbone, view_b)
    sim = F.normalize(fa[0], dim=-1) @ F.normalize(fb[0], dim=-1).mT         # Na, Nb
    best_b = sim.argmax(1)
    scores = sim.max(1).values
    order = scores.argsort(descending=True)[:top]
    return [(int(i), int(best_b[i]), float(scores[i])) for i in order], (ga, gb)


def match_verdicts(matches, geometry, view_a: torch.Tensor, view_b: torch.Tensor, ga, gb) -> list[str]:
    """For each (i, j, cos) match: 'true' / 'one off' / 'wrong' / 'outside' (no true match: A's token lies outside
    view B) from the two crops' geometry (``box`` / ``flip`` dicts, see :mod:`vitlab.ssl.correspondence`)."""
    from vitlab.ssl.correspondence import true_matches, within_one_token
    target, valid = true_matches(geometry[0], geometry[1], tuple(view_a.shape[-2:]), tuple(view_b.shape[-2:]), ga, gb)
    out = []
    for i, j, _ in matches:
        t = int(target[i])
        near = bool(within_one_token(torch.tensor(j), torch.tensor(t), gb[1]))
        out.append("outside" if not valid[i] else "true" if j == t else "one off" if near else "wrong")
    return out


def region_correspondence_figure(backbone, view_a: torch.Tensor, view_b: torch.Tensor, path, mean, std,
                                 top: int = 10, title: str = "", geometry=None) -> Path:
    """Two views side by side joined by their ``top`` best region matches, labelled with their cosine; with the
    crops' ``geometry`` (two ``box`` / ``flip`` dicts) each match also says whether it is the true one (solid
    lines) or not (dotted)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import ConnectionPatch
    matches, (ga, gb) = region_matches(backbone, view_a, view_b, top)
    verdicts = match_verdicts(matches, geometry, view_a, view_b, ga, gb) if geometry else [None] * len(matches)
    fig, axes = plt.subplots(1, 2, figsize=(7.5, 3.6))
    for ax, view, name in zip(axes, (view_a, view_b), ("view 1", "view 2")):
        ax.imshow(_to_display(view[0], mean, std))
        ax.set_title(name)
        ax.axis("off")
    (ha, wa), (hb, wb) = ga, gb
    sa = (view_a.shape[-2] / ha, view_a.shape[-1] / wa)
    sb = (view_b.shape[-2] / hb, view_b.shape[-1] / wb)
    for rank, ((i, j, s), verdict) in enumerate(zip(matches, verdicts)):
        pa = ((i % wa + 0.5) * sa[1] - 0.5, (i // wa + 0.5) * sa[0] - 0.5)
        pb = ((j % wb + 0.5) * sb[1] - 0.5, (j // wb + 0.5) * sb[0] - 0.5)
        color = plt.cm.viridis(rank / max(len(matches) - 1, 1))
        style = ":" if verdict in ("wrong", "outside") else "-"
        fig.add_artist(ConnectionPatch(pa, pb, "data", "data", axesA=axes[0], axesB=axes[1], color=color, lw=1.2,
                                       linestyle=style))
        axes[0].plot(*pa, "o", color=color, ms=3, label=f"cos {s:.2f}" + (f", {verdict}" if verdict else ""))
        axes[1].plot(*pb, "o", color=color, ms=3)
    if matches:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="center right", fontsize=7, frameon=False,
                   title="match (best first)" + ("\nsolid: true or one off" if geometry else ""), title_fontsize=7)
    head = f"{title}: " if title else ""
    fig.suptitle(f"{head}top-{len(matches)} region matches (cosine of final-stage features, {ha}x{wa} and {hb}x{wb} "
                 f"token grids)", fontsize=9)
    fig.subplots_adjust(right=0.8)
    _save(fig, path)
    return Path(path)


@torch.no_grad()
def last_block_attention_maps(backbone, image: torch.Tensor) -> torch.Tensor:
    """(heads, H, W) attention received per token in the last block (mean over the queries of each window)."""
    backbone.eval()
    attn = backbone.last_attention(image)                                   # nW, heads, N, N
    block = backbone.layers[-1].blocks[-1]
    ws = block.window_size
    received = attn.mean(2)                                                 # nW, heads, N
    nw = received.shape[0]
    side = int(round(nw ** 0.5)) * ws
    maps = window_reverse(received.transpose(1, 2).contiguous(), ws, side, side)  # 1, side, side, heads
    grid = image.shape[-1] // (backbone.patch_size * 2 ** (backbone.num_layers - 1))
    return maps[0, :max(grid, 1), :max(grid, 1)].permute(2, 0, 1)


def attention_figure(backbone, image: torch.Tensor, path, mean, std, title: str = "") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    maps = last_block_attention_maps(backbone, image)
    heads = maps.shape[0]
    fig, axes = plt.subplots(1, heads + 1, figsize=(2 * (heads + 1), 2.2))
    disp = _to_display(image[0], mean, std)
    axes[0].imshow(disp)
    axes[0].set_title("input")
    size = image.shape[-2:]
    for h in range(heads):
        up = F.interpolate(maps[h][None, None], size=size, mode="nearest")[0, 0]
        axes[h + 1].imshow(disp)
        axes[h + 1].imshow(up.cpu().numpy(), alpha=0.6, cmap="inferno")
        axes[h + 1].set_title(f"head {h}")
    for ax in axes:
        ax.axis("off")
    fig.suptitle(f"{title + ': ' if title else ''}attention received in the last block ({maps.shape[-2]}x"
                 f"{maps.shape[-1]} token grid)", fontsize=9)
    _save(fig, path)
    return Path(path)

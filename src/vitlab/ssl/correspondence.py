"""Region correspondence accuracy of frozen features (EsViT, arXiv 2106.09785, Sec. 5 "correspondence").

Two augmented views of one image are taken with known crop boxes and flips, so which token of view B
shows the place a token of view A shows follows from the geometry alone: the centre of A's token is
mapped into the original image and then into B; the B token whose cell contains it is the true match
(A tokens whose centre falls outside B's crop have none and are not counted). A token's *predicted*
match is the B token with the highest cosine similarity of final-stage features (what the region loss
L_R trains on). The paper's two numbers are reported:

* accuracy - share of A tokens whose predicted match is the true one (``exact``; ``within_one``: at
  most one token away in both directions of B's grid);
* distance error - mean l2 distance, in pixels of the original image, between the centre of the
  predicted B token and the A token's centre (``distance_px``).

``chance`` is the exact accuracy of a uniformly random match (mean of 1 / N_B). When the images come with
label maps (the texture scenes), two region-level numbers are added, read at the token centres:

* ``same_region`` - share of A tokens whose predicted B token shows the same class (texture) as the A token:
  a match that lands elsewhere inside the right region counts here but not in ``exact``;
* ``label_oracle`` - the exact accuracy of features that know each token's class and nothing else (the
  match drawn uniformly among B's tokens of the true token's class): how much of ``exact`` class identity
  alone can explain. Inside a uniform texture, tokens differ only by position and content details.

The pure functions
work on one pair of views; :func:`evaluate_correspondence` runs a backbone over pairs of DINO global
views of a dataset's images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def token_centres(box: torch.Tensor, flip: bool, view_size: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """(h*w, 2) original-image (y, x) pixel coordinates of the centres of a view's token cells, row-major.

    ``box`` = (top, left, height, width) of the crop in the original image; the crop was resized to
    ``view_size`` and then mirrored when ``flip``. Coordinates are continuous (pixel edges at integers)."""
    top, left, bh, bw = (float(v) for v in box)
    gh, gw = grid
    vh, vw = view_size
    ys = (torch.arange(gh, dtype=torch.float64) + 0.5) * vh / gh
    xs = (torch.arange(gw, dtype=torch.float64) + 0.5) * vw / gw
    if flip:
        xs = vw - xs
    yy, xx = torch.meshgrid(top + ys * bh / vh, left + xs * bw / vw, indexing="ij")
    return torch.stack([yy.reshape(-1), xx.reshape(-1)], 1)


def locate_in_view(points: torch.Tensor, box: torch.Tensor, flip: bool, view_size: tuple[int, int],
                   grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """For (P, 2) original-image (y, x) points: ``(token index in the view's grid, inside the crop)``."""
    top, left, bh, bw = (float(v) for v in box)
    gh, gw = grid
    vh, vw = view_size
    y = (points[:, 0] - top) * vh / bh
    x = (points[:, 1] - left) * vw / bw
    inside = (y >= 0) & (y < vh) & (x >= 0) & (x < vw)
    if flip:
        x = vw - x
    row = (y * gh / vh).floor().clamp(0, gh - 1).long()
    col = (x * gw / vw).floor().clamp(0, gw - 1).long()
    return row * gw + col, inside


def true_matches(geom_a: dict, geom_b: dict, view_a: tuple[int, int], view_b: tuple[int, int],
                 grid_a: tuple[int, int], grid_b: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index of the true B token for every A token, valid)`` from two crops' ``box`` / ``flip``."""
    centres = token_centres(geom_a["box"], bool(geom_a["flip"]), view_a, grid_a)
    return locate_in_view(centres, geom_b["box"], bool(geom_b["flip"]), view_b, grid_b)


def within_one_token(pred: torch.Tensor, target: torch.Tensor, width: int) -> torch.Tensor:
    """Whether grid indices ``pred`` and ``target`` (row-major, ``width`` columns) are at most one token apart
    in both directions."""
    return ((pred // width - target // width).abs() <= 1) & ((pred % width - target % width).abs() <= 1)


def labels_at(points: torch.Tensor, label_map: torch.Tensor) -> torch.Tensor:
    """Class of an (H, W) label map at (P, 2) continuous (y, x) points (clamped to the image)."""
    h, w = label_map.shape
    y = points[:, 0].floor().long().clamp(0, h - 1)
    x = points[:, 1].floor().long().clamp(0, w - 1)
    return label_map[y, x]


def pair_scores(feats_a: torch.Tensor, feats_b: torch.Tensor, geom_a: dict, geom_b: dict, view_a, view_b,
                grid_a, grid_b, label_map: torch.Tensor | None = None,
                ignore_index: int = 255) -> dict[str, torch.Tensor]:
    """Per valid A token: ``exact`` / ``within_one`` (0/1), ``distance_px`` and ``chance``, for one pair of
    views with (N_A, C) / (N_B, C) token features; with the image's (H, W) ``label_map`` also
    ``same_region`` (0/1) and ``label_oracle`` (over the valid A tokens whose centre and true match are not on
    an ``ignore_index`` pixel)."""
    centres_a = token_centres(geom_a["box"], bool(geom_a["flip"]), view_a, grid_a)
    target, valid = locate_in_view(centres_a, geom_b["box"], bool(geom_b["flip"]), view_b, grid_b)
    sim = F.normalize(feats_a.float(), dim=-1) @ F.normalize(feats_b.float(), dim=-1).T
    pred = sim.argmax(1).cpu()
    near = within_one_token(pred, target, grid_b[1])
    centres_b = token_centres(geom_b["box"], bool(geom_b["flip"]), view_b, grid_b)
    dist = (centres_b[pred] - centres_a).norm(dim=1)
    n_valid = int(valid.sum())
    out = {"exact": (pred == target)[valid].double(), "within_one": near[valid].double(),
           "distance_px": dist[valid], "chance": torch.full((n_valid,), 1.0 / len(feats_b), dtype=torch.float64)}
    if label_map is not None:
        class_a, class_b = labels_at(centres_a, label_map), labels_at(centres_b, label_map)
        keep = valid & (class_a != ignore_index) & (class_b[target] != ignore_index)
        tokens_of_class = torch.bincount(class_b)                                   # B's tokens per class
        out["same_region"] = (class_b[pred] == class_a)[keep].double()
        out["label_oracle"] = (1.0 / tokens_of_class[class_b[target]].double())[keep]
    return out


def summarise(scores: list[dict[str, torch.Tensor]]) -> dict[str, float]:
    """Means over every valid token of every pair (accuracies in percent)."""
    cat = {k: torch.cat([s[k] for s in scores]) for k in scores[0]}
    n = len(cat["exact"])
    if n == 0:
        raise ValueError("no token of view A lies inside view B in any pair: nothing to score")
    out = {"exact": 100.0 * float(cat["exact"].mean()), "within_one": 100.0 * float(cat["within_one"].mean()),
           "distance_px": float(cat["distance_px"].mean()), "chance": 100.0 * float(cat["chance"].mean()),
           "tokens": n, "pairs": len(scores)}
    for key in ("same_region", "label_oracle"):
        if key in cat and len(cat[key]):
            out[key] = 100.0 * float(cat[key].mean())
    return out


@torch.no_grad()
def evaluate_correspondence(backbone, dataset, *, mean, std, in_chans: int, view_size: int, pairs: int = 200,
                            seed: int = 0, photometric: bool = True, scale=(0.4, 1.0), device="cpu",
                            batch_size: int = 64, label_maps=None) -> dict[str, float]:
    """Correspondence of ``backbone``'s final-stage tokens over ``pairs`` view pairs of ``dataset``'s images (items
    ``(uint8 or [0, 1] image, label)`` with no transform), each seen as the two DINO global views of
    :class:`~vitlab.data.multicrop.MultiCropTransform` (seeded by ``seed`` and the pair's index). Pair i shows
    image i mod N, so more pairs than images draws further view pairs of the same images. ``label_maps``
    ((N, H, W) classes of the same images, 255 = unlabelled) adds the region-level scores."""
    from vitlab.data.multicrop import MultiCropConfig, MultiCropTransform, apply_photometric, normalize_images
    from vitlab.ssl.region_tokens import split_features
    transform = MultiCropTransform(MultiCropConfig(global_size=view_size, n_local=0, global_scale=tuple(scale)),
                                   in_chans)
    backbone.eval()
    if pairs < 1 or len(dataset) == 0:
        raise ValueError(f"correspondence needs at least one pair and one image, got {pairs} pairs of "
                         f"{len(dataset)} images")
    images = min(pairs, len(dataset))
    if label_maps is not None:
        label_maps = torch.as_tensor(label_maps).long().cpu()
        if len(label_maps) < images:
            raise ValueError(f"label_maps: expected one map per scored image ({images}), got {len(label_maps)}")
    scores = []
    for start in range(0, pairs, batch_size):
        items = []
        for idx in range(start, min(start + batch_size, pairs)):
            g = torch.Generator().manual_seed(seed * 1_000_003 + idx)
            n = idx % len(dataset)
            image = dataset[n][0]
            if label_maps is not None and tuple(label_maps.shape[1:]) not in (tuple(image.shape[:2]),
                                                                              tuple(image.shape[-2:])):
                raise ValueError(f"label map {n} is {tuple(label_maps.shape[1:])}, expected the image's height x "
                                 f"width (image {tuple(image.shape)})")
            items.append(transform(image, g))
        views, geoms = [], []
        for v in range(2):
            crops = torch.stack([crops[v] for crops, _ in items]).to(device)
            params = {k: torch.stack([p[v][k] for _, p in items]).to(device) for k in items[0][1][v]}
            x = (apply_photometric(crops, params, mean, std, in_chans) if photometric
                 else normalize_images(crops, mean, std, in_chans))
            _, tokens, grid = split_features(backbone, x)
            views.append((tokens, grid))
            geoms.append([{"box": p[v]["box"], "flip": p[v]["flip"]} for _, p in items])
        (ta, grid_a), (tb, grid_b) = views
        size = (view_size, view_size)
        for i in range(len(items)):
            label_map = None if label_maps is None else label_maps[(start + i) % len(dataset)]
            scores.append(pair_scores(ta[i], tb[i], geoms[0][i], geoms[1][i], size, size, grid_a, grid_b,
                                      label_map=label_map))
    return {**summarise(scores), "images": images, "grid": f"{grid_a[0]}x{grid_a[1]}"}

"""nms / batched_nms against a plain greedy loop (the textbook algorithm, one pair at a time)."""
import importlib

import numpy as np
import pytest
import torch

from vitlab.ops import batched_nms, nms

nms_module = importlib.import_module("vitlab.ops.nms")


def loop_nms(boxes: torch.Tensor, scores: torch.Tensor, thr: float) -> list[int]:
    """Visit boxes by decreasing score (ties: lower index first); keep one unless a kept box overlaps it
    with IoU > thr. Arithmetic in the boxes' precision, the comparison in double."""
    T = np.float32 if boxes.dtype == torch.float32 else np.float64
    b = boxes.numpy().astype(T)
    s = scores.tolist()
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    area = [T(b[i, 2] - b[i, 0]) * T(b[i, 3] - b[i, 1]) for i in range(len(s))]
    kept: list[int] = []
    for j in order:
        suppressed = False
        for i in kept:
            w = max(T(0), min(b[i, 2], b[j, 2]) - max(b[i, 0], b[j, 0]))
            h = max(T(0), min(b[i, 3], b[j, 3]) - max(b[i, 1], b[j, 1]))
            inter = T(w * h)
            with np.errstate(invalid="ignore", divide="ignore"):
                iou = inter / (area[i] + area[j] - inter)
            if float(iou) > thr:
                suppressed = True
                break
        if not suppressed:
            kept.append(j)
    return kept


def loop_batched_nms(boxes, scores, idxs, thr) -> list[int]:
    kept = []
    for c in sorted(set(idxs.tolist())):
        members = [i for i, v in enumerate(idxs.tolist()) if v == c]
        sub = loop_nms(boxes[members], scores[members], thr)
        kept += [members[i] for i in sub]
    s = scores.tolist()
    return sorted(kept, key=lambda i: (-s[i], i))


def random_boxes(n: int, gen: torch.Generator, dtype=torch.float32, grid: bool = False):
    """Boxes with duplicates, zero-area and degenerate members; integer coordinates on a small grid when
    `grid` (many exact ties in IoU), and scores with ties."""
    if grid:
        xy = torch.randint(0, 12, (n, 2), generator=gen).to(dtype)
        wh = torch.randint(0, 6, (n, 2), generator=gen).to(dtype)
        scores = torch.randint(0, 8, (n,), generator=gen).to(dtype) / 8
    else:
        xy = torch.rand(n, 2, generator=gen, dtype=dtype) * 100
        wh = torch.rand(n, 2, generator=gen, dtype=dtype) * 40
        scores = torch.rand(n, generator=gen, dtype=dtype)
    boxes = torch.cat([xy, xy + wh], 1)
    k = n // 10
    boxes[:k] = boxes[k:2 * k]                     # exact duplicates
    boxes[2 * k:3 * k, 2] = boxes[2 * k:3 * k, 0]  # zero width
    boxes[3 * k:3 * k + 2] = boxes[3 * k + 2:3 * k + 4]
    boxes[3 * k:3 * k + 4, 3] = boxes[3 * k:3 * k + 4, 1]  # identical zero-area pairs
    scores[4 * k:5 * k] = scores[5 * k:6 * k]      # score ties
    return boxes, scores


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("grid", [False, True])
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_nms_matches_loop(dtype, grid, thr):
    gen = torch.Generator().manual_seed(int(thr * 10) + 100 * grid)
    boxes, scores = random_boxes(250, gen, dtype, grid)
    keep = nms(boxes, scores, thr)
    assert keep.dtype == torch.int64
    assert keep.tolist() == loop_nms(boxes, scores, thr)
    # sorted by score, descending
    assert torch.all(scores[keep][1:] <= scores[keep][:-1])


def test_nms_blocks_match_loop(monkeypatch):
    monkeypatch.setattr(nms_module, "_BLOCK", 16)
    gen = torch.Generator().manual_seed(3)
    for grid in (False, True):
        boxes, scores = random_boxes(200, gen, torch.float32, grid)
        assert nms(boxes, scores, 0.5).tolist() == loop_nms(boxes, scores, 0.5)
        idxs = torch.randint(0, 4, (200,), generator=gen)
        assert batched_nms(boxes, scores, idxs, 0.5).tolist() == loop_batched_nms(boxes, scores, idxs, 0.5)


def test_nms_hand_cases():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.95])
    # IoU([0,0,10,10],[1,1,11,11]) = 81 / 119 = 0.68
    assert nms(boxes, scores, 0.5).tolist() == [3, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 1, 2]
    # strictly greater: identical boxes (IoU 1) survive a threshold of 1
    assert nms(boxes, scores, 1.0).tolist() == [3, 0, 1, 2]
    # equal scores keep input order
    assert nms(boxes[:3], torch.ones(3), 0.9).tolist() == [0, 1, 2]
    # two identical zero-area boxes: IoU 0/0 suppresses nothing
    zero = torch.tensor([[5, 5, 5, 9], [5, 5, 5, 9.]])
    assert nms(zero, torch.tensor([0.5, 0.6]), 0.1).tolist() == [1, 0]


def test_nms_threshold_compared_in_double():
    # IoU = 1/10, which float32 rounds up (0.10000000149 > 0.1): float32 boxes suppress, float64 do not
    boxes = torch.tensor([[0, 0, 10, 1], [0, 0, 1, 1.]])
    scores = torch.tensor([1.0, 0.9])
    assert nms(boxes, scores, 0.1).tolist() == [0]
    assert nms(boxes.double(), scores.double(), 0.1).tolist() == [0, 1]
    assert loop_nms(boxes, scores, 0.1) == [0] and loop_nms(boxes.double(), scores.double(), 0.1) == [0, 1]


def test_nms_empty_and_errors():
    e = nms(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert e.dtype == torch.int64 and e.shape == (0,)
    e = batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5)
    assert e.dtype == torch.int64 and e.shape == (0,)
    assert nms(torch.tensor([[0, 0, 1, 1.]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        nms(torch.zeros(3, 5), torch.zeros(3), 0.5)
    with pytest.raises(ValueError, match="scores"):
        nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


@pytest.mark.parametrize("grid", [False, True])
def test_batched_nms_matches_per_class_loop(grid):
    gen = torch.Generator().manual_seed(7 + grid)
    boxes, scores = random_boxes(300, gen, torch.float32, grid)
    for num_classes in (1, 3, 40):
        ids = torch.randint(0, num_classes, (300,), generator=gen)
        for idxs in (ids, ids * 1000 - 7):          # arbitrary (also negative, sparse) category ids
            keep = batched_nms(boxes, scores, idxs, 0.5)
            assert keep.tolist() == loop_batched_nms(boxes, scores, idxs, 0.5)


def test_batched_nms_categories_do_not_interact():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10.]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 0]), 0.5).tolist() == [0, 1]
    assert batched_nms(boxes, scores, torch.tensor([0, 1, 2]), 0.5).tolist() == [0, 1, 2]


def test_nms_large_inputs():
    gen = torch.Generator().manual_seed(11)
    xy = torch.rand(5000, 2, generator=gen) * 800
    boxes = torch.cat([xy, xy + 8 + torch.rand(5000, 2, generator=gen) * 120], 1)
    scores = torch.rand(5000, generator=gen)
    keep = nms(boxes, scores, 0.7)
    # every kept pair overlaps at most the threshold, and every dropped box overlaps a kept earlier box
    from vitlab.ops import box_iou
    iou = box_iou(boxes[keep], boxes[keep])
    iou.fill_diagonal_(0)
    assert iou.max() <= 0.7
    rank = torch.empty(5000, dtype=torch.int64)
    rank[torch.sort(scores, descending=True, stable=True).indices] = torch.arange(5000)
    dropped = torch.ones(5000, dtype=torch.bool)
    dropped[keep] = False
    d = dropped.nonzero()[:, 0]
    ov = (box_iou(boxes[d], boxes[keep]) > 0.7) & (rank[keep][None, :] < rank[d][:, None])
    assert ov.any(1).all()

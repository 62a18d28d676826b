"""Weighted k-NN classification on L2-normalised frozen features (Wu et al., arXiv 1805.01978; DINO's protocol).

Each query takes its ``k`` most cosine-similar bank features; neighbour j votes for its class with
weight exp(s_j / T). Defaults k=20, T=0.07 as in DINO and EsViT. Features are extracted on the
model's device; under torchrun every rank extracts its shard and the shards are gathered, so each
rank ends with the whole bank (the search runs on the device too).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.engine.distributed import DistInfo, all_gather_rows
from vitlab.engine.loaders import eval_loader


def knn_classify(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """(Q, num_classes) vote scores for each query; features are L2-normalised here."""
    if len(bank) != len(bank_labels):
        raise ValueError(f"bank has {len(bank)} features but {len(bank_labels)} labels")
    k = min(k, len(bank))
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float().to(bank.device), dim=1)
    labels = bank_labels.to(bank.device)
    scores = []
    for q in queries.split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), num_classes, dtype=weights.dtype, device=bank.device)
        votes.scatter_add_(1, labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 k: int = 20, temperature: float = 0.07, num_classes: int | None = None) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy in percent; ``k`` is reported as used
    (at most the bank's size)."""
    num_classes = num_classes or int(max(bank_labels.max(), query_labels.max())) + 1
    k = min(k, len(bank))
    scores = knn_classify(bank, bank_labels, queries, num_classes, k, temperature)
    query_labels = query_labels.to(scores.device)
    out = {"top1": 100.0 * float((scores.argmax(1) == query_labels).float().mean()), "k": k, "T": temperature}
    if num_classes > 5:
        top5 = scores.topk(5, dim=1).indices
        out["top5"] = 100.0 * float((top5 == query_labels[:, None]).any(1).float().mean())
    return out


def pooled_features(backbone: nn.Module, x: torch.Tensor, mode: str = "pooled") -> torch.Tensor:
    """``pooled``: the model's own pooled pre-logits feature (EsViT's k-NN feature: mean of the final normed
    tokens); ``last4``: the concatenated pooled outputs of the last 4 blocks (EsViT's linear-probe feature)."""
    if mode == "pooled":
        return backbone.forward_head(backbone.forward_features(x), pre_logits=True)
    if mode == "last4":
        if not hasattr(backbone, "forward_last_blocks"):
            raise ValueError(f"{type(backbone).__name__} has no per-block outputs; use the 'pooled' features")
        return backbone.forward_last_blocks(x, 4)
    raise ValueError(f"feature mode must be 'pooled' or 'last4', got {mode!r}")


@torch.no_grad()
def extract_features(backbone: nn.Module, dataset, *, device: torch.device | None = None, dist: DistInfo | None = None,
                     batch_size: int = 256, workers: int = 0, mode: str = "pooled",
                     amp: str | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Frozen-backbone features of every (readable) item of ``dataset``: (features, labels, skipped names).

    ``dataset`` items are ``(image, label)`` with the evaluation transform applied. Rows come in rank
    order (each rank's shard), on ``device`` - the order does not matter to k-NN or a linear probe.
    """
    from vitlab.engine.runtime import autocast
    dist = dist or DistInfo()
    device = device or next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    feats, labels, skipped = [], [], []
    for x, y, names in eval_loader(dataset, batch_size=batch_size, workers=workers, dist=dist,
                                   pin_memory=device.type == "cuda"):
        skipped += names
        if x is None:
            continue
        with autocast(device, amp):
            feats.append(pooled_features(backbone, x.to(device, non_blocking=True), mode).float())
        labels.append(torch.as_tensor(y, device=device))
    backbone.train(was_training)
    if not feats:
        raise ValueError("no readable image to extract features from")
    f, lab = torch.cat(feats), torch.cat(labels)
    return torch.cat(all_gather_rows(f, dist)), torch.cat(all_gather_rows(lab, dist)), skipped


@torch.no_grad()
def knn_evaluate(backbone: nn.Module, bank_set, query_set, *, k: int = 20, temperature: float = 0.07,
                 device=None, dist: DistInfo | None = None, batch_size: int = 256, workers: int = 0,
                 mode: str = "pooled", amp: str | None = None, num_classes: int | None = None) -> dict:
    """k-NN top-1 / top-5 of ``backbone``'s frozen features: the bank from ``bank_set``, queries from ``query_set``."""
    common = dict(device=device, dist=dist, batch_size=batch_size, workers=workers, mode=mode, amp=amp)
    bank, bank_y, skipped = extract_features(backbone, bank_set, **common)
    queries, query_y, more = extract_features(backbone, query_set, **common)
    out = knn_accuracy(bank, bank_y, queries, query_y, k, temperature, num_classes)
    out.update(bank=len(bank), queries=len(queries), skipped=len(skipped) + len(more))
    return out


def raw_pixel_features(dataset, center: bool = False, reference: torch.Tensor | None = None,
                       batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Flattened evaluation-transformed pixels of ``dataset`` (the baseline any learned feature must beat) and
    labels; ``center`` subtracts the mean of ``reference`` (the bank's pixels) first."""
    flat = nn.Flatten()
    x, y, _ = extract_features(_Pixels(flat), dataset, device=torch.device("cpu"), batch_size=batch_size)
    if center:
        x = x - (x if reference is None else reference).mean(0, keepdim=True)
    return x, y


class _Pixels(nn.Module):
    """A parameter-free "backbone" whose pooled feature is the flattened input."""

    def __init__(self, flat: nn.Module):
        super().__init__()
        self.flat = flat
        self.dummy = nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward_features(self, x):
        return self.flat(x)

    def forward_head(self, x, pre_logits: bool = False):
        return x

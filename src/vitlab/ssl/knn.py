"""Weighted k-NN classification on L2-normalised features (Wu et al., arXiv 1805.01978; DINO's protocol).

Each query takes its ``k`` most cosine-similar bank features; neighbour j votes for its class
with weight exp(s_j / T). Defaults k=20, T=0.07 as in DINO and EsViT.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.ssl.data import eval_batch


def knn_classify(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> torch.Tensor:
    """(Q, num_classes) vote scores for each query; features are L2-normalised here."""
    if len(bank) != len(bank_labels):
        raise ValueError(f"bank has {len(bank)} features but {len(bank_labels)} labels")
    k = min(k, len(bank))
    bank = F.normalize(bank.float(), dim=1)
    queries = F.normalize(queries.float(), dim=1)
    scores = []
    for q in queries.split(chunk):
        sim, idx = (q @ bank.T).topk(k, dim=1)
        weights = (sim / temperature).exp()
        votes = torch.zeros(len(q), num_classes, dtype=weights.dtype)
        votes.scatter_add_(1, bank_labels[idx], weights)
        scores.append(votes)
    return torch.cat(scores)


def knn_accuracy(bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
                 k: int = 20, temperature: float = 0.07) -> dict[str, float]:
    """Top-1 (and top-5 when there are more than 5 classes) accuracy in percent."""
    num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    scores = knn_classify(bank, bank_labels, queries, num_classes, k, temperature)
    out = {"top1": 100.0 * float((scores.argmax(1) == query_labels).float().mean()), "k": k, "T": temperature}
    if num_classes > 5:
        top5 = scores.topk(5, dim=1).indices
        out["top5"] = 100.0 * float((top5 == query_labels[:, None]).any(1).float().mean())
    return out


@torch.no_grad()
def extract_features(backbone: nn.Module, images_uint8: torch.Tensor, size: int, mean, std,
                     batch_size: int = 256, mode: str = "pooled") -> torch.Tensor:
    """Frozen-backbone features of whole images: ``pooled`` (mean of final normed tokens, EsViT's k-NN
    feature) or ``last4`` (concatenated pooled outputs of the last 4 blocks, the linear-probe feature)."""
    was_training = backbone.training
    backbone.eval()
    in_chans = backbone.patch_embed.proj.in_channels
    device = next(backbone.parameters()).device
    feats = []
    for chunk in images_uint8.split(batch_size):
        x = eval_batch(chunk, size, mean, std, in_chans).to(device)
        if mode == "pooled":
            feats.append(backbone.forward_features(x).mean(1).float().cpu())
        elif mode == "last4":
            feats.append(backbone.forward_last_blocks(x, 4).float().cpu())
        else:
            raise ValueError(f"feature mode must be 'pooled' or 'last4', got {mode!r}")
    backbone.train(was_training)
    return torch.cat(feats)


def raw_pixel_features(images_uint8: torch.Tensor, size: int, center: bool = False,
                       reference: torch.Tensor | None = None) -> torch.Tensor:
    """Flattened resized pixels (the baseline any learned feature must beat); ``center`` subtracts the
    mean image of ``reference`` (the bank) first."""
    x = eval_batch(images_uint8, size, (0.0,), (1.0,), images_uint8.shape[1]).flatten(1)
    if center:
        ref = x if reference is None else eval_batch(reference, size, (0.0,), (1.0,), reference.shape[1]).flatten(1)
        x = x - ref.mean(0, keepdim=True)
    return x

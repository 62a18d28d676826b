"""Linear probe on frozen features (EsViT's linear evaluation: concatenated average-pooled outputs of the
last 4 blocks, Sec. 4 of arXiv 2106.09785), trained here on pre-extracted features.

Features are standardised with the training statistics (a parameter-free BatchNorm), then a single
Linear layer is trained with AdamW and cross-entropy on mini-batches, on the features' device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def train_linear_probe(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                       test_labels: torch.Tensor, epochs: int = 100, lr: float = 1e-2, weight_decay: float = 1e-4,
                       batch_size: int = 256, seed: int = 0) -> dict:
    """Returns ``{"top1", "train_top1", "epochs"}`` (percent) and the trained layer under ``"classifier"``."""
    if len(train_feats) != len(train_labels):
        raise ValueError(f"{len(train_feats)} training features but {len(train_labels)} labels")
    gen = torch.Generator().manual_seed(seed)
    mean, std = train_feats.mean(0, keepdim=True), train_feats.std(0, keepdim=True).clamp_min(1e-6)
    xtr, xte = (train_feats - mean) / std, (test_feats - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    torch.manual_seed(seed)
    device = train_feats.device
    layer = nn.Linear(xtr.shape[1], num_classes).to(device)
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    opt = torch.optim.AdamW(layer.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, (len(xtr) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=gen)
        for idx in perm.to(device).split(batch_size):
            loss = F.cross_entropy(layer(xtr[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        top1 = 100.0 * float((layer(xte).argmax(1) == test_labels).float().mean())
        train_top1 = 100.0 * float((layer(xtr).argmax(1) == train_labels).float().mean())
    return {"top1": top1, "train_top1": train_top1, "epochs": epochs, "classifier": layer}

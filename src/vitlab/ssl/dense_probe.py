"""Dense linear probe: a per-token linear classifier on frozen final-stage maps, scored by mIoU.

The region-level counterpart of the k-NN / linear probe (EsViT evaluates region features by dense
transfer; this is the frozen, linear version, as in linear semantic-segmentation probes of
self-supervised features). For every image the frozen backbone gives a (C, h, w) map
(:func:`vitlab.ssl.region_tokens.dense_features`); features are standardised with the training
statistics, a 1x1 linear layer predicts K class scores per token, the scores are upsampled
bilinearly to the label resolution, and cross-entropy over labelled pixels (255 = ignore) trains it
with AdamW on a cosine schedule. mIoU / mAcc / aAcc of the held-out maps follow mmseg's definitions
(:class:`~vitlab.segmentation.metrics.SegmentationMetric`).

:class:`PixelTokens` is the raw-pixel baseline: each token is its stride x stride patch of pixels.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.segmentation.metrics import SegmentationMetric


class PixelTokens(nn.Module):
    """Raw pixels as region tokens: (B, C * s * s, H / s, W / s) patches (the dense raw-pixel baseline)."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride
        self.feature_info = [{"reduction": stride}]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride
        b, c, h, w = x.shape
        return F.unfold(x, s, stride=s).view(b, c * s * s, h // s, w // s)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@torch.no_grad()
def extract_maps(backbone: nn.Module, images: torch.Tensor, batch_size: int = 64, device="cpu") -> torch.Tensor:
    """(N, C, h, w) frozen maps of normalised images (N, 3, H, W), on the CPU."""
    from vitlab.ssl.region_tokens import dense_features
    backbone.eval()
    return torch.cat([dense_features(backbone, chunk.to(device)).float().cpu() for chunk in images.split(batch_size)])


def train_dense_probe(train_maps: torch.Tensor, train_labels: torch.Tensor, val_maps: torch.Tensor,
                      val_labels: torch.Tensor, num_classes: int, *, epochs: int = 60, lr: float = 1e-2,
                      weight_decay: float = 1e-4, batch_size: int = 100, ignore_index: int = 255, seed: int = 0,
                      train_size: int | None = 32, class_names: list[str] | None = None) -> dict:
    """Train the 1x1 probe on (N, C, h, w) maps against (N, H, W) labels; mIoU etc. on the validation maps.

    Training compares the upsampled scores with the labels resized (nearest) to ``train_size`` pixels a
    side, which is 16x cheaper than the full 128 px maps and loses only the finest borders; validation
    always scores the full-resolution labels."""
    if len(train_maps) != len(train_labels) or len(val_maps) != len(val_labels):
        raise ValueError(f"maps and label maps differ in number: train {len(train_maps)} / {len(train_labels)}, "
                         f"val {len(val_maps)} / {len(val_labels)}")
    mean = train_maps.mean(dim=(0, 2, 3), keepdim=True)
    std = train_maps.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    xtr, xva = (train_maps - mean) / std, (val_maps - mean) / std
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    probe = nn.Conv2d(xtr.shape[1], num_classes, 1)
    opt = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * max(1, -(-len(xtr) // batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    if train_size and train_size < train_labels.shape[-1]:
        train_labels = F.interpolate(train_labels[:, None].float(), size=(train_size, train_size),
                                     mode="nearest")[:, 0].long()
    size = tuple(train_labels.shape[-2:])
    for _ in range(epochs):
        for idx in torch.randperm(len(xtr), generator=gen).split(batch_size):
            logits = F.interpolate(probe(xtr[idx]), size=size, mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, train_labels[idx], ignore_index=ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    metric = SegmentationMetric(num_classes, ignore_index, class_names)
    with torch.no_grad():
        for maps, labels in zip(xva.split(batch_size), val_labels.split(batch_size)):
            logits = F.interpolate(probe(maps), size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
            metric.update(logits.argmax(1), labels)
    res = metric.compute()
    return {"mIoU": res["mIoU"], "mAcc": res["mAcc"], "aAcc": res["aAcc"], "per_class": res["per_class"],
            "epochs": epochs, "final_loss": float(loss.detach()), "probe": probe}


def scene_tensors(images, labels, size: int, mean, std) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, H, W, 3) scenes and (N, H, W) labels -> normalised (N, 3, size, size) images (bicubic) and
    the labels as int64 at their own resolution."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return (x - m) / s, torch.from_numpy(labels).long()


def dense_probe_scenes(backbone: nn.Module, root, *, size: int, mean, std, device="cpu", epochs: int = 60,
                       seed: int = 0) -> dict:
    """The probe on a texture-scenes folder (``training`` -> ``validation``)."""
    from vitlab.data.synthetic_scenes import CLASS_NAMES, read_split_arrays
    train_x, train_y = scene_tensors(*read_split_arrays(root, "training"), size, mean, std)
    val_x, val_y = scene_tensors(*read_split_arrays(root, "validation"), size, mean, std)
    train_maps = extract_maps(backbone, train_x, device=device)
    val_maps = extract_maps(backbone, val_x, device=device)
    res = train_dense_probe(train_maps, train_y, val_maps, val_y, len(CLASS_NAMES), epochs=epochs, seed=seed,
                            class_names=list(CLASS_NAMES))
    return {**res, "grid": f"{train_maps.shape[-2]}x{train_maps.shape[-1]}", "channels": int(train_maps.shape[1]),
            "train": len(train_maps), "val": len(val_maps)}

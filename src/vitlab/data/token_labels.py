"""Token-labeling targets (Jiang et al., arXiv 2104.10858): one dense score map (K, h, w) per training image.

The maps come from a machine annotator and are stored in one file, ``(N, K, h, w)`` in the order of
the training set: ``.pt``/``.pth`` (a tensor, read with ``weights_only=True``), ``.npy``, or
``.safetensors`` (key ``maps``). :class:`TokenLabelDataset` returns ``((image, maps), label)``; the
trainer pools the maps to the model's token grid and uses them as the aux head's targets.

The maps are not warped with the image, so geometric augmentation (random-resized crop with scale
below 1, flips) is refused: the official code re-crops the maps with RoIAlign, which is not done here.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .datasets import SeededDataset
from .folder import Skipped


def load_token_label_maps(path: str | Path) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token-label file {path} does not exist")
    if path.suffix == ".npy":
        maps = torch.from_numpy(np.load(path, allow_pickle=False))
    elif path.suffix == ".safetensors":
        from safetensors.torch import load_file
        tensors = load_file(str(path))
        if "maps" not in tensors and len(tensors) != 1:
            raise ValueError(f"{path} should hold one tensor or a tensor named 'maps', found {sorted(tensors)}")
        maps = tensors.get("maps", next(iter(tensors.values())))
    else:
        maps = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
        raise ValueError(f"token labels in {path} must be one (N, K, h, w) tensor of score maps, got "
                         f"{getattr(maps, 'shape', type(maps).__name__)}")
    return maps.float()


class TokenLabelDataset(SeededDataset):
    """Wraps a training dataset: ``((image, maps[idx]), label)``."""

    def __init__(self, base, maps: torch.Tensor, num_classes: int):
        if len(maps) != len(base):
            raise ValueError(f"{len(maps)} token-label maps for a training set of {len(base)} images")
        if maps.shape[1] != num_classes:
            raise ValueError(f"token-label maps have {maps.shape[1]} classes but the dataset has {num_classes}")
        self.base, self.maps = base, maps
        self.seeded = getattr(base, "seeded", False)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        sample = self.base[key]
        if sample is None or isinstance(sample, Skipped):
            return sample
        idx = key[0] if isinstance(key, (tuple, list)) else key
        x, y = sample
        return (x, self.maps[int(idx)]), y


def check_token_label_recipe(aug: dict) -> None:
    """Token labels need un-warped images and no image mixing (MixToken mixes tokens instead)."""
    problems = []
    if [float(v) for v in aug.get("scale", (1, 1))] != [1.0, 1.0]:
        problems.append(f"aug.scale={aug['scale']} (use [1.0, 1.0])")
    if aug.get("hflip", 0) > 0:
        problems.append("aug.hflip > 0 (use 0)")
    if aug.get("mixup", 0) > 0 or aug.get("cutmix", 0) > 0:
        problems.append("mixup/cutmix (use aug.mix_token instead)")
    if problems:
        raise ValueError("token labels are not warped with the image, so this recipe cannot use: "
                         + "; ".join(problems))

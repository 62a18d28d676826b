"""Token-labeling targets (Jiang et al., "All Tokens Matter", arXiv 2104.10858): a machine annotator's
dense score maps, one per training image, warped with the image's own crop and flip.

**Folder format** (the official ``generate_label.py`` layout, which ``vitlab token-labels generate``
writes): for the training image ``ROOT/<class>/<name>.<ext>`` the file ``LABELS/<class>/<name>.pt``
holds one ``torch.save``'d float16 tensor of shape ``(2, k, h, w)``: ``[0]`` the teacher's top-k
per-location *logits* (descending), ``[1]`` their class indices (as float16, exact up to 2048
classes), at the teacher's token grid ``h x w`` for the whole image. vitlab adds
``LABELS/token_labels.json`` (classes, top-k, grid, teacher); files without it (made by the official
script) are read too. Files are read lazily, one per sample in the loader worker.

**Warping** (as the official ``tlt`` code): the dense ``(K, h, w)`` map is the top-k logits scattered
into zeros (other classes 0); the sample's random-resized crop box, as fractions of the image, is
mapped onto the map (``box * size - 0.5``, torchvision RoIAlign with ``aligned=False``) and RoIAligned
to the model's token grid; a softmax over classes gives each token's distribution, label smoothing
``t * (1 - s + s/K) + s/K`` as the official ``mixup_target``, and the horizontal flip is applied after
(the official code flips the whole map before the crop; the two are the same). The crop box and flip
are those the image transform drew: they are replayed from the sample's seed with the transform's
own :meth:`~vitlab.data.transforms.RandomResizedCrop.box` (see :func:`crop_geometry`). RandAugment's
geometric ops (rotate, shear, translate) are *not* applied to the maps (the official code does).

The batch work (scatter, RoIAlign, softmax) runs on the training device in the step
(:func:`warp_token_labels`); a sample carries only its ``(2, k, h, w)`` record and its geometry
``(x1, y1, x2, y2, flipped)`` (fractions of the image).

**Single-file format** (kept): ``(N, K, h, w)`` score maps in the order of the training set (``.pt`` /
``.pth`` / ``.npy`` / ``.safetensors`` key ``maps``), not warped, so random crops and flips are
refused with it (:func:`check_token_label_recipe`).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from vitlab.errors import DataError

from .datasets import SeededDataset, split_key
from .folder import Skipped

META_FILE = "token_labels.json"
FORMAT = "vitlab-token-labels/1"


# --- the per-image folder format ------------------------------------------------------------------------

def label_file(labels_root: str | Path, image_path: str | Path) -> Path:
    """``LABELS/<class>/<name>.pt`` for ``.../<class>/<name>.<ext>`` (the image's parent folder mirrored)."""
    p = Path(image_path)
    return Path(labels_root) / p.parent.name / (p.stem + ".pt")


def _official_label_file(labels_root, image_path) -> Path:
    """The official script's name: everything before the first dot (``a.b.jpg`` -> ``a.pt``)."""
    p = Path(image_path)
    return Path(labels_root) / p.parent.name / (p.name.split(".")[0] + ".pt")


def find_label_file(labels_root, image_path) -> Path | None:
    for f in (label_file(labels_root, image_path), _official_label_file(labels_root, image_path)):
        if f.is_file():
            return f
    return None


def topk_record(logits: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Dense logits (B, K, h, w) -> records (B, 2, k, h, w) float16: top-k logits and their indices."""
    if logits.ndim != 4:
        raise ValueError(f"dense logits must be (B, K, h, w), got {tuple(logits.shape)}")
    if k > logits.shape[1]:
        raise ValueError(f"--topk {k} is more than the teacher's {logits.shape[1]} classes")
    if logits.shape[1] > 2048:
        raise ValueError(f"{logits.shape[1]} classes: float16 indices are exact only up to 2048")
    values, indices = logits.float().topk(k, dim=1)
    return torch.stack([values, indices.float()], dim=1).half()


def read_meta(labels_root) -> dict | None:
    f = Path(labels_root) / META_FILE
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{f} is not a readable token-label description: {e}") from e


def load_record(path: Path, num_classes: int) -> torch.Tensor:
    """One image's (2, k, h, w) record as float32, checked."""
    rec = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(rec, torch.Tensor) or rec.ndim != 4 or rec.shape[0] != 2:
        raise DataError(f"token-label file {path} should hold a (2, k, h, w) tensor (top-k scores and class "
                        f"indices), got {getattr(rec, 'shape', type(rec).__name__)}")
    rec = rec.float()
    top = int(rec[1].max()) if rec.numel() else 0
    if top >= num_classes or float(rec[1].min()) < 0:
        raise DataError(f"token-label file {path} names class {top} but the dataset has {num_classes} classes")
    return rec


def dense_logits(records: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, 2, k, h, w) records -> (B, K, h, w): the top-k logits in place, every other class 0."""
    b, _, _, h, w = records.shape
    out = torch.zeros((b, num_classes, h, w), dtype=torch.float32, device=records.device)
    return out.scatter_(1, records[:, 1].long(), records[:, 0].float())


def warp_token_labels(records: torch.Tensor, geometry: torch.Tensor, num_classes: int, grid,
                      smoothing: float = 0.0) -> torch.Tensor:
    """Per-token target distributions (B, K, gh, gw) for the crops and flips in ``geometry``.

    records (B, 2, k, h, w); geometry (B, 5): crop ``x1, y1, x2, y2`` as fractions of the image and
    ``flipped`` (1 or 0); grid: the model's token grid (int or (gh, gw)).
    """
    from vitlab.ops.roi_align import roi_align
    gh, gw = (grid, grid) if isinstance(grid, int) else tuple(grid)
    maps = dense_logits(records, num_classes)
    h, w = maps.shape[-2:]
    g = geometry.to(maps.device, torch.float32)
    scale = torch.tensor([w, h, w, h], dtype=torch.float32, device=maps.device)
    boxes = torch.cat([torch.arange(len(g), device=maps.device, dtype=torch.float32)[:, None],
                       g[:, :4] * scale - 0.5], dim=1)
    out = roi_align(maps, boxes, (gh, gw), aligned=False).softmax(dim=1)
    flip = g[:, 4] > 0.5
    out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    off = smoothing / num_classes
    return out * (1.0 - smoothing) + off if smoothing else out


def aux_grid(output) -> tuple[int, int]:
    """The square token grid of a ``forward_train`` output's aux logits (B, N, K)."""
    aux = output[1] if isinstance(output, (tuple, list)) and len(output) >= 2 else None
    if not isinstance(aux, torch.Tensor) or aux.ndim != 3:
        raise ValueError("token labels need a model with an auxiliary token head (e.g. VOLO with return_dense=True) "
                         "and its model.forward_train(x) output, which carries aux_logits")
    side = int(round(aux.shape[1] ** 0.5))
    if side * side != aux.shape[1]:
        raise ValueError(f"token labels need a square token grid, got {aux.shape[1]} tokens")
    return side, side


# --- geometry: the crop box and flip the image transform drew ----------------------------------------

def crop_geometry(transform, h: int, w: int, generator) -> tuple[float, float, float, float, float]:
    """Replay ``transform``'s random-resized crop and flip for an ``h x w`` image with ``generator``.

    The training pipeline (:func:`~vitlab.data.transforms.build_train_transform`) draws its crop box
    first and its flip right after; replaying those draws on a generator seeded like the sample's gives
    the same box and flip the image got. Returns ``(x1, y1, x2, y2, flipped)``, fractions of the image.
    """
    from .transforms import Compose, RandomHorizontalFlip, RandomResizedCrop, ToChannels, ToTensor
    steps = transform.transforms if isinstance(transform, Compose) else [transform]
    top, left, ch, cw, flipped = 0, 0, h, w, 0.0
    i = 0
    while i < len(steps) and isinstance(steps[i], (ToTensor, ToChannels)):
        i += 1
    if i < len(steps) and isinstance(steps[i], RandomResizedCrop):
        top, left, ch, cw = steps[i].box(h, w, generator)
        i += 1
        if i < len(steps) and isinstance(steps[i], RandomHorizontalFlip) and steps[i].p > 0:
            flipped = float(float(torch.rand((), generator=generator)) < steps[i].p)
    else:
        raise DataError(f"token labels need the training transform to start with a random-resized crop, got "
                        f"{transform!r}")
    return left / w, top / h, (left + cw) / w, (top + ch) / h, flipped


def _image_size(path: str) -> tuple[int, int]:
    from PIL import Image
    with Image.open(path) as im:
        w, h = im.size
    return h, w


class TokenLabelFolderDataset(SeededDataset):
    """Wraps an image-folder training set: ``((image, (record, geometry)), label)``, the record read lazily."""

    def __init__(self, base, labels_root: str | Path, num_classes: int, class_names=None):
        samples = getattr(base, "samples", None)
        if samples is None or getattr(base, "transform", None) is None:
            raise DataError("token-label folders need an image-folder training set (--data folder:PATH); "
                            f"got {type(base).__name__}")
        self.base, self.root, self.num_classes = base, Path(labels_root), int(num_classes)
        self.seeded = getattr(base, "seeded", False)
        meta = read_meta(self.root)
        if meta is not None:
            k = meta.get("num_classes")
            if k is not None and int(k) != self.num_classes:
                raise DataError(f"token labels in {self.root} are over {k} classes (teacher "
                                f"{meta.get('teacher')}) but the dataset has {self.num_classes}")
            if class_names is not None and meta.get("classes") and list(meta["classes"]) != list(class_names):
                raise DataError(f"token labels in {self.root} were made for the classes {meta['classes'][:5]}... "
                                f"but the dataset has {list(class_names)[:5]}...")
        self.files = []
        missing = []
        for path, _ in samples:
            f = find_label_file(self.root, path)
            (missing.append(path) if f is None else self.files.append(f))
        if missing:
            raise DataError(f"{len(missing)} of {len(samples)} training images have no token-label file in "
                            f"{self.root}, e.g. {missing[0]} (expected {label_file(self.root, missing[0])}); "
                            f"run vitlab token-labels generate")

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key):
        if not isinstance(key, (tuple, list)):  # no per-sample seed: draw one, so the replay sees the same draws
            key = (int(key), int(torch.randint(0, 2 ** 62, ())))
        sample = self.base[key]
        if sample is None or isinstance(sample, Skipped):
            return sample
        idx, generator = split_key(key)
        path = self.base.samples[idx][0]
        geometry = crop_geometry(self.base.transform, *_image_size(path), generator)
        x, y = sample
        return (x, (load_record(self.files[idx], self.num_classes), torch.tensor(geometry))), y


# --- the single-file format -------------------------------------------------------------------------------

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
    """Wraps a training dataset: ``((image, maps[idx]), label)`` (single-file maps, not warped)."""

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


def is_label_folder(path) -> bool:
    return Path(path).is_dir()


def check_token_label_recipe(aug: dict, warped: bool = False) -> None:
    """Single-file maps need un-warped, un-mixed images; folder maps (``warped``) follow crops, flips and mixes."""
    if warped:
        return
    problems = []
    if [float(v) for v in aug.get("scale", (1, 1))] != [1.0, 1.0]:
        problems.append(f"aug.scale={aug['scale']} (use [1.0, 1.0])")
    if aug.get("hflip", 0) > 0:
        problems.append("aug.hflip > 0 (use 0)")
    if aug.get("mixup", 0) > 0 or aug.get("cutmix", 0) > 0:
        problems.append("mixup/cutmix (use aug.mix_token instead)")
    if problems:
        raise ValueError("single-file token labels are not warped with the image, so this recipe cannot use: "
                         + "; ".join(problems) + " (a per-image label folder from vitlab token-labels generate is)")

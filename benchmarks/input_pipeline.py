"""Decode + augmentation images/s per worker for the VOLO recipe, the float pipeline vs the uint8 one.

    python benchmarks/input_pipeline.py                                  # 300 JPEGs 500x375, 3 passes
    python benchmarks/input_pipeline.py --images 8 --iters 1 --loader-images 0   # a smoke run
    python benchmarks/input_pipeline.py --gpu-imgs-per-s 2100 --out input_pipeline.md

The images: a few hundred JPEGs (quality 90, ``--image-size``, default 500x375 like many ImageNet
photos) in class folders, made once from scikit-image's bundled photos (random crops, rescales and
flips, so no two are the same) and cached in ``--folder`` (default: a folder in the temp dir).

The recipe: RandomResizedCrop 224 bicubic (scale 0.08-1), hflip 0.5, RandAugment
``rand-m9-mstd0.5-inc1``, random erasing 0.25 (pixel mode), Mixup 0.8 / CutMix 1.0 on the batch.

* (a) float: Pillow decodes the full image, then float tensor transforms, normalise and erase per
  image (``build_train_transform(output="float")``).
* (b) uint8: the crop box from the header, JPEG draft decoding when the crop is at least twice the
  output in both sides, Pillow's resize on uint8, RandAugment as in (a), uint8 out; normalise and
  erase on the batch on the device (``BatchPrep``), which is not worker time.

Everything per worker runs in this one process with ``--threads`` torch threads (default 1: a
DataLoader worker's count), the two pipelines interleaved pass by pass so that machine load hits
both alike; the best pass is reported. Stages are timed alone in ms/image. The number of workers a
GPU needs is ``--gpu-imgs-per-s`` / (per-worker images/s); its default (1500, VOLO-D1 bf16 training
on one H200) is an assumption, to be replaced by a measured training throughput. The DataLoader rows
time whole epochs over ``--loader-images`` images with ``--workers`` workers (pinned memory only when
CUDA is present).
"""
from __future__ import annotations

import argparse
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vitlab.data import transforms as T
from vitlab.data.device_prep import BatchPrep, apply_erasing, erase_boxes, normalize_uint8
from vitlab.data.folder import ImageFolder, collate_skipping, decoded, load_image
from vitlab.data.jpeg import draft_reduction
from vitlab.data.mixup import Mixup
from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "camera", "moon")
RECIPE = dict(auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, remode="pixel", recount=1, interpolation="bicubic",
              hflip=0.5, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
SIZE = 224


def make_images(folder: Path, n: int, size: tuple[int, int], quality: int, seed: int = 0) -> Path:
    """``n`` JPEGs of ``size`` (w, h) in one class folder per source photo; kept when already there."""
    from PIL import Image
    import skimage.data as sd
    root = folder / f"jpeg_{size[0]}x{size[1]}_q{quality}_n{n}"
    if (root / ".done").exists():
        return root
    rng = np.random.default_rng(seed)
    photos = []
    for name in PHOTOS:
        try:
            arr = getattr(sd, name)()
        except Exception:  # a photo this scikit-image does not bundle
            continue
        photos.append((name, np.stack([arr] * 3, -1) if arr.ndim == 2 else arr[..., :3]))
    for i in range(n):
        name, arr = photos[i % len(photos)]
        h, w = arr.shape[:2]
        frac = rng.uniform(0.5, 1.0)
        ch, cw = max(16, int(h * math.sqrt(frac))), max(16, int(w * math.sqrt(frac)))
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        im = Image.fromarray(np.ascontiguousarray(arr[top:top + ch, left:left + cw]))
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        out = root / name / f"{i:05d}.jpg"
        out.parent.mkdir(parents=True, exist_ok=True)
        im.resize(size, Image.Resampling.BICUBIC).save(out, quality=quality)
    (root / ".done").write_text("ok\n")
    return root


def pipelines(root: Path):
    common = dict(img_size=SIZE, mean=IMAGENET_MEAN, std=IMAGENET_STD, **RECIPE)
    old = ImageFolder(root, T.build_train_transform(**common))
    new = ImageFolder(root, T.build_train_transform(**common, output="uint8", draft=True))
    prep = BatchPrep(mean=IMAGENET_MEAN, std=IMAGENET_STD, reprob=RECIPE["reprob"], remode=RECIPE["remode"])
    return old, new, prep


def per_image(fn, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n


def best_interleaved(fns: dict, iters: int) -> dict[str, float]:
    """Best seconds per call of each function, calls interleaved round-robin."""
    times = {k: [] for k in fns}
    for _ in range(iters):
        for k, fn in fns.items():
            times[k].append(fn())
    return {k: min(v) for k, v in times.items()}


def stage_times(paths: list[str], iters: int, batch: int, size: tuple[int, int]) -> dict[str, float]:
    """ms/image of each stage alone, the stages interleaved pass by pass."""
    from PIL import Image
    n = len(paths)
    g = torch.Generator().manual_seed(0)
    rrc = T.RandomResizedCrop(SIZE, RECIPE["scale"], RECIPE["ratio"], "bicubic")
    flip = T.RandomHorizontalFlip(0.5)
    ra = T.build_train_transform(SIZE, IMAGENET_MEAN, IMAGENET_STD, auto_augment=RECIPE["auto_augment"],
                                 hflip=0).transforms[-2]
    full = [torch.from_numpy(load_image(p)).permute(2, 0, 1).contiguous() for p in paths]
    floats = [T.to_tensor(x) for x in full]
    crops = [rrc(x, g) for x in floats]
    crops_u8 = [T.quantize(c) for c in crops]
    norm, erase = T.Normalize(IMAGENET_MEAN, IMAGENET_STD), T.RandomErasing(RECIPE["reprob"])
    mixup = Mixup(1000, mixup_alpha=0.8, cutmix_alpha=1.0)
    stack_u8 = torch.stack(crops_u8[:batch] * math.ceil(batch / min(n, batch)))[:batch]
    labels = torch.zeros(batch, dtype=torch.long)
    rng = np.random.default_rng(0)

    pils = []
    for path in paths:
        with Image.open(path) as im:
            pils.append(decoded(im, "RGB"))

    def pil_crop(i):  # what the folder does after decoding: Pillow resizes the box of the decoded image
        w, h = pils[i].size
        top, left, ch, cw = rrc.box(h, w, g)
        return T.pil_to_uint8(pils[i].resize((SIZE, SIZE), T.PIL_RESAMPLE["bicubic"],
                                             box=(left, top, left + cw, top + ch)))

    def decode_draft(i):
        with Image.open(paths[i]) as im:
            w, h = im.size
            im.draft("RGB", (w // 2, h // 2))
            im.load()
            np.array(im)

    def batched(fn):
        def run():
            t0 = time.perf_counter()
            for _ in range(max(1, n // batch)):
                fn()
            return (time.perf_counter() - t0) / (max(1, n // batch) * batch)
        return run

    def erase_batch():
        x = normalize_uint8(stack_u8, IMAGENET_MEAN, IMAGENET_STD)
        t0 = time.perf_counter()
        apply_erasing(x, erase_boxes(batch, SIZE, SIZE, prob=RECIPE["reprob"], generator=g), "pixel")
        return time.perf_counter() - t0

    stages = {
        f"decode full (Pillow, {size[0]}x{size[1]} -> array)": lambda: per_image(lambda i: load_image(paths[i]), n),
        "decode draft 1/2 (when the crop allows it)": lambda: per_image(decode_draft, n),
        "RRC + flip, float torch (a)": lambda: per_image(lambda i: flip(rrc(floats[i], g), g), n),
        "RRC + flip, uint8 Pillow (b)": lambda: per_image(lambda i: flip(pil_crop(i), g), n),
        "RandAugment rand-m9-mstd0.5-inc1 (float, both)": lambda: per_image(lambda i: ra(crops[i], g), n),
        "uint8 <-> float around RandAugment (b)": lambda: per_image(
            lambda i: T.quantize(crops_u8[i].float().div(255.0)), n),
        "to-tensor + normalise per image (a)": lambda: per_image(lambda i: norm(T.to_tensor(crops_u8[i])), n),
        "normalise on the batch (b, device side)": batched(lambda: normalize_uint8(stack_u8, IMAGENET_MEAN,
                                                                                   IMAGENET_STD)),
        "random erasing 0.25 per image (a)": lambda: per_image(lambda i: erase(crops[i], g), n),
        "random erasing 0.25 on the batch (b, device side)": lambda: sum(erase_batch()
                                                                         for _ in range(max(1, n // batch)))
        / (max(1, n // batch) * batch),
        "Mixup 0.8 / CutMix 1.0 on the batch": batched(lambda: mixup(stack_u8.float(), labels, rng)),
    }
    return {k: v * 1e3 for k, v in best_interleaved(stages, iters).items()}


def pipeline_rates(old, new, prep, iters: int, batch: int, seed: int = 1) -> dict[str, float]:
    """Per-worker images/s of (a) and (b) over every image, interleaved; (b)'s device work timed apart."""
    n = len(old)
    keys = [(i, seed * 1_000_003 + i) for i in range(n)]

    def run_old():
        t0 = time.perf_counter()
        for k in keys:
            old[k]
        return (time.perf_counter() - t0) / n

    device_time = []

    def run_new():
        t0 = time.perf_counter()
        out = [new[k] for k in keys]
        dt = (time.perf_counter() - t0) / n
        t1 = time.perf_counter()
        for j in range(0, n - batch + 1, batch) if n >= batch else [0]:
            x, _, _ = collate_skipping(out[j:j + batch])
            prep(x, j)
        device_time.append((time.perf_counter() - t1) / n)
        return dt

    best = best_interleaved({"a": run_old, "b": run_new}, iters)
    return {"a": 1.0 / best["a"], "b": 1.0 / best["b"], "b_device_ms": min(device_time) * 1e3}


def draft_share(new: ImageFolder, seed: int = 1) -> dict[int, float]:
    """Fraction of samples decoded at each reduction (the boxes replayed from the same seeds)."""
    from PIL import Image
    rrc = new.transform.transforms[2]
    counts: dict[int, int] = {}
    for i, (path, _) in enumerate(new.samples):
        with Image.open(path) as im:
            w, h = im.size
        _, _, ch, cw = rrc.box(h, w, torch.Generator().manual_seed(seed * 1_000_003 + i))
        s = draft_reduction((ch, cw), rrc.size)
        counts[s] = counts.get(s, 0) + 1
    return {s: c / len(new) for s, c in sorted(counts.items())}


def loader_rates(old, new, prep, workers: int, batch: int, epochs: int = 2) -> dict[str, float]:
    """End-to-end images/s of a DataLoader: (a) float samples, workers re-spawned each epoch; (b) uint8 samples,
    persistent workers, pinned memory when CUDA is there, prefetched to the device and prepared there."""
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.loaders import PrefetchLoader, train_loader
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    pin = device.type == "cuda"
    rates = {}
    for name, ds, persistent in (("a", old, False), ("b", new, True)):
        loader, sampler = train_loader(ds, batch_size=batch, accum_steps=1, workers=workers, seed=0,
                                       dist=DistInfo(), pin_memory=pin, persistent_workers=persistent)
        if name == "b":
            loader = PrefetchLoader(loader, device, prepare=lambda b, i: (prep(b[0], i), *b[1:]))
        images, t0 = 0, time.perf_counter()
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for x, _, _ in (loader if name == "b" else ((to_dev(b, device)) for b in loader)):
                images += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates[name] = images / (time.perf_counter() - t0)
        del loader
    return rates


def to_dev(batch, device):
    x, y, skipped = batch
    return x.to(device), y.to(device), skipped


def fmt(v: float, nd: int = 2) -> str:
    return f"{v:.{nd}f}"


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--images", type=int, default=300, help="JPEGs to generate and time (default 300)")
    p.add_argument("--image-size", default="500x375", help="W x H of the generated JPEGs (default 500x375)")
    p.add_argument("--quality", type=int, default=90)
    p.add_argument("--folder", type=Path, default=None, help="cache folder for the JPEGs (default: temp dir)")
    p.add_argument("--iters", type=int, default=3, help="interleaved passes; the best is reported (default 3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as in a loader worker)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--gpu-imgs-per-s", type=float, default=1500.0,
                   help="training throughput to feed (default 1500: an assumed VOLO-D1 bf16 rate on one H200)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for the end-to-end rows")
    p.add_argument("--loader-images", type=int, default=None, help="images per DataLoader epoch (0: skip; "
                                                                  "default: --images)")
    p.add_argument("--out", type=Path, default=None, help="also write the table here (atomically)")
    args = p.parse_args(argv)
    if args.images < 1 or args.iters < 1:
        p.error("--images and --iters must be at least 1")
    try:
        size = tuple(int(v) for v in args.image_size.lower().split("x"))
        assert len(size) == 2 and min(size) > 0
    except (ValueError, AssertionError):
        p.error(f"--image-size must look like 500x375, got {args.image_size!r}")
    torch.set_num_threads(args.threads)
    folder = args.folder or Path(tempfile.gettempdir()) / "vitlab_input_pipeline"
    root = make_images(folder, args.images, size, args.quality)
    old, new, prep = pipelines(root)
    paths = [p for p, _ in old.samples]
    batch = min(args.batch_size, len(paths))

    stages = stage_times(paths, args.iters, batch, size)
    rates = pipeline_rates(old, new, prep, args.iters, batch)
    share = draft_share(new)
    n_loader = args.images if args.loader_images is None else args.loader_images
    loader = {}
    if n_loader > 0 and args.workers > 0:
        sub_old = ImageFolder(root, old.transform, indices=range(min(n_loader, len(old))))
        sub_new = ImageFolder(root, new.transform, indices=range(min(n_loader, len(new))))
        loader = loader_rates(sub_old, sub_new, prep, args.workers, batch)

    gpu = args.gpu_imgs_per_s
    lines = [f"Input pipeline, VOLO recipe (RRC {SIZE} bicubic, hflip, {RECIPE['auto_augment']}, erasing "
             f"{RECIPE['reprob']}, Mixup 0.8 / CutMix 1.0): {len(paths)} JPEGs {size[0]}x{size[1]} q{args.quality}, "
             f"torch {torch.__version__}, {args.threads} thread(s), {platform.processor() or platform.machine()}, "
             f"best of {args.iters} interleaved passes",
             "",
             "| per worker (one process) | (a) float pipeline | (b) uint8 + draft | (b) / (a) |",
             "|---|---:|---:|---:|",
             f"| images/s | {fmt(rates['a'], 1)} | {fmt(rates['b'], 1)} | {fmt(rates['b'] / rates['a'])}x |",
             f"| ms/image | {fmt(1e3 / rates['a'])} | {fmt(1e3 / rates['b'])} | |",
             f"| workers to feed {gpu:g} img/s (assumed GPU rate) | {math.ceil(gpu / rates['a'])} | "
             f"{math.ceil(gpu / rates['b'])} | |",
             "",
             f"(b)'s batch normalise + erasing, timed here on the CPU: {fmt(rates['b_device_ms'], 3)} ms/image "
             f"(on the GPU it overlaps the model). Draft reductions used by (b): "
             + ", ".join(f"1/{s}: {100 * v:.0f}%" if s > 1 else f"full size: {100 * v:.0f}%" for s, v in share.items())
             + f" (a crop gets 1/2 only when it is at least {2 * SIZE}x{2 * SIZE}).",
             f"The {gpu:g} img/s GPU rate is an assumption (VOLO-D1 bf16 training on one H200); replace it with the "
             f"measured training throughput (--gpu-imgs-per-s).",
             "",
             "| stage | ms/image |",
             "|---|---:|"]
    lines += [f"| {k} | {fmt(v, 3)} |" for k, v in stages.items()]
    if loader:
        lines += ["", f"DataLoader, {args.workers} workers, batch {batch}, {min(n_loader, len(paths))} images x 2 "
                  f"epochs, pinned memory {'on' if torch.cuda.is_available() else 'off (no CUDA)'}:", "",
                  "| DataLoader end to end | images/s |", "|---|---:|",
                  f"| (a) float samples, workers re-spawned per epoch | {fmt(loader['a'], 1)} |",
                  f"| (b) uint8 + draft, persistent workers, PrefetchLoader + BatchPrep | {fmt(loader['b'], 1)} |",
                  f"| (b) / (a) | {fmt(loader['b'] / loader['a'])}x |"]
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.out is not None:
        from vitlab.checkpoints.atomic import atomic_write_text
        atomic_write_text(args.out, table)
    return table


if __name__ == "__main__":
    main()

"""``vitlab token-labels generate``: a teacher's dense top-k score maps for every training image
(token labeling, Jiang et al., arXiv 2104.10858), in the official per-image layout.

For ``ROOT/<class>/<name>.<ext>`` (or ``ROOT/train/<class>/...``) it writes ``OUT/<class>/<name>.pt``:
a float16 ``(2, k, h, w)`` tensor, the teacher's top-k per-location logits and their class indices
(see :mod:`vitlab.data.token_labels`), plus ``OUT/token_labels.json``. The teacher sees the whole
image resized to its input size (no crop, no augmentation), so the map covers the image that the
training crops are cut from. Dense logits are ``model.forward_train(x).aux_logits`` (VOLO, LV-ViT-style
aux heads) or the model's own output when it is already ``(B, K, h, w)``. Files are written atomically
and existing ones are skipped, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

from vitlab.cli.common import MODEL_HELP, add_flags
from vitlab.errors import VitlabError

COMMAND = "token-labels"
HELP = "generate token-labeling score maps (top-k per location) with a teacher model"


def add_arguments(p):
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    g = sub.add_parser("generate", help="run a teacher over the training images and write one (2, k, h, w) "
                                        "file per image", description=__doc__.split("\n\n")[0])
    g.add_argument("--teacher", required=True, metavar="MODEL", help=MODEL_HELP)
    add_flags(g, "checkpoint", "data", "output", "img_size", "batch_size", "device", "threads", "workers",
              "progress", "amp")
    g.add_argument("--topk", type=int, default=5, help="classes kept per location (default 5, as the paper)")
    g.add_argument("--size", type=int, metavar="N", help="map side in locations (default: the teacher's token grid; "
                                                         "other sizes resample the logits bilinearly)")
    g.add_argument("--num-classes", type=int, help="classes of a registered teacher name (default: the model's)")
    g.set_defaults(batch_size=None, workers=0)


def _train_root(data: str):
    from pathlib import Path
    spec = data[len("folder:"):] if data.startswith("folder:") else data
    root = Path(spec)
    if not root.is_dir():
        raise VitlabError(f"--data {data!r}: expected an image folder ROOT/<class>/*.jpg or ROOT/train/<class>/")
    return root / "train" if (root / "train").is_dir() else root


class _Images:
    """The images to label, resized whole to the teacher's input (a torch Dataset)."""

    def __init__(self, paths, size, in_chans, mean, std, interpolation):
        from vitlab.data.transforms import Normalize, ToChannels, resize, to_tensor
        self.paths, self.size, self.interp = paths, size, interpolation
        self.to_channels, self.norm, self.resize, self.to_tensor = ToChannels(in_chans), Normalize(mean, std), \
            resize, to_tensor

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from vitlab.data.folder import load_image
        img = self.to_channels(self.to_tensor(load_image(self.paths[i], "RGB")))
        return self.norm(self.resize(img, (self.size, self.size), self.interp)), i


def dense_teacher_logits(model, x):
    """(B, K, h, w) per-location logits of the teacher."""
    import torch
    train = getattr(model, "forward_train", None)
    out = train(x) if train is not None else model(x)
    aux = getattr(out, "aux_logits", None)
    if isinstance(aux, torch.Tensor) and aux.ndim == 3 and aux.shape[1] > 1:
        b, n, k = aux.shape
        side = int(round(n ** 0.5))
        if side * side != n:
            raise VitlabError(f"the teacher's {n} aux tokens are not a square grid")
        return aux.transpose(1, 2).reshape(b, k, side, side)
    dense = out[0] if isinstance(out, (tuple, list)) else out
    if isinstance(dense, torch.Tensor) and dense.ndim == 4:
        return dense
    raise VitlabError("the teacher gives no per-location logits: it needs an aux token head "
                      "(forward_train(x).aux_logits, e.g. VOLO) or a dense (B, K, h, w) output")


def run(args) -> int:
    return generate(args)


def _teacher(args):
    """The teacher on its device, with its input size, channels, mean / std and class count."""
    from vitlab.cli.common import load_model
    from vitlab.data.transforms import match_channels
    from vitlab.engine.distributed import DistInfo
    from vitlab.engine.runtime import resolve_device
    from vitlab.models.base import IMAGENET_MEAN, IMAGENET_STD
    overrides = {k: v for k, v in (("img_size", args.img_size), ("num_classes", args.num_classes)) if v}
    model = load_model(args.teacher, args.checkpoint, **overrides)
    device = resolve_device(args.device or "auto", DistInfo())
    model.to(device).eval()
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    in_chans, _, size = tuple(cfg.get("input_size", (3, 224, 224)))[-3:]
    prep = dict(size=args.img_size or size, in_chans=in_chans, mean=match_channels(cfg.get("mean", IMAGENET_MEAN),
                in_chans), std=match_channels(cfg.get("std", IMAGENET_STD), in_chans),
                interpolation=cfg.get("interpolation", "bicubic"))
    k = int(getattr(model, "num_classes", 0) or 0)
    if k and args.topk > k:
        raise VitlabError(f"--topk {args.topk} is more than the teacher's {k} classes")
    return model, device, prep, k


def _claim_output(out, meta: dict) -> None:
    """Write ``token_labels.json``; an existing folder made with other settings is refused."""
    from vitlab.checkpoints.atomic import atomic_write_json
    from vitlab.data.token_labels import read_meta
    old = read_meta(out)
    if old is not None:
        keys = ("teacher", "checkpoint", "num_classes", "classes", "topk", "size", "input_size")
        diff = [k for k in keys if old.get(k) != meta[k]]
        if diff:
            raise VitlabError(f"{out} holds token labels made with other settings ({', '.join(diff)} differ); "
                              f"use another -o")
    atomic_write_json(out / "token_labels.json", meta)


def _label_images(args, model, device, prep: dict, todo: list, out) -> tuple[int, tuple, tuple]:
    """Run the teacher over ``todo`` and write one top-k file per image: (count, teacher grid, file grid)."""
    import sys

    import torch
    import torch.nn.functional as F

    from vitlab.checkpoints.atomic import atomic_torch_save
    from vitlab.data.token_labels import label_file, topk_record
    data = _Images(todo, prep["size"], prep["in_chans"], prep["mean"], prep["std"], prep["interpolation"])
    bs = args.batch_size or 64
    loader = torch.utils.data.DataLoader(data, batch_size=bs, num_workers=args.workers or 0)
    bar = None
    if args.progress == "bar" or (args.progress in (None, "auto") and sys.stderr.isatty()):
        from tqdm import tqdm
        bar = tqdm(total=len(todo), unit="img", desc="token labels", dynamic_ncols=True)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    done, grid, records = 0, None, None
    with torch.inference_mode():
        for x, idx in loader:
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = dense_teacher_logits(model, x.to(device)).float()
            grid = tuple(logits.shape[-2:])
            if args.size and grid != (args.size, args.size):
                logits = F.interpolate(logits, size=(args.size, args.size), mode="bilinear", align_corners=False)
            records = topk_record(logits, args.topk).cpu()
            for rec, i in zip(records, idx.tolist()):
                atomic_torch_save(rec.clone(), label_file(out, todo[i]))
            done += len(idx)
            if bar is not None:
                bar.update(len(idx))
            elif done == len(todo) or (done // bs) % 50 == 0:
                print(f"{done}/{len(todo)} images", flush=True)
    if bar is not None:
        bar.close()
    return done, grid, tuple(records.shape[-2:])


def generate(args) -> int:
    from pathlib import Path

    from vitlab.cli.common import set_threads
    from vitlab.data.folder import find_classes, scan_images
    from vitlab.data.token_labels import FORMAT, label_file

    if not args.data or not args.output:
        raise VitlabError("token-labels generate needs --data ROOT and -o OUT")
    set_threads(args.threads)
    if args.topk < 1:
        raise VitlabError(f"--topk must be at least 1, got {args.topk}")
    root, out = _train_root(args.data), Path(args.output)
    classes = find_classes(root)
    samples = scan_images(root, classes)
    model, device, prep, k_teacher = _teacher(args)
    meta = {"format": FORMAT, "layout": "(2, topk, h, w) float16: [0] top-k logits, [1] class indices",
            "teacher": str(args.teacher), "checkpoint": args.checkpoint, "num_classes": k_teacher,
            "classes": classes, "topk": args.topk, "size": args.size,
            "input_size": [prep["in_chans"], prep["size"], prep["size"]], "images": len(samples)}
    _claim_output(out, meta)
    todo = [p for p, _ in samples if not label_file(out, p).is_file()]
    print(f"teacher {args.teacher} ({k_teacher} classes) on {device}: {len(samples)} images in {root}, "
          f"{len(samples) - len(todo)} already labelled, {len(todo)} to do -> {out}", flush=True)
    if not todo:
        return 0
    done, grid, (h, w) = _label_images(args, model, device, prep, todo, out)
    print(f"wrote {done} files of shape (2, {args.topk}, {h}, {w}) (teacher grid {grid[0]}x{grid[1]}) -> {out}",
          flush=True)
    return 0

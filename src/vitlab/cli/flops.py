"""``vitlab flops``: multiply-adds per stage and in total (GMACs, the unit the papers report).

Counts come from ``vitlab.bench.flops.count_macs`` (PyTorch's FLOP counter, halved: it counts 2
FLOPs per multiply-add). It counts matrix products, convolutions and attention; element-wise
work (norms, activations, softmax, residual adds, pooling, the outlook/overlap-add sums) is not
counted, as in fvcore/mmcv, whose numbers the papers quote.

Stages follow the model's ``feature_info`` and the order in which modules run: a stage holds its
module's sub-tree plus the modules of the same container that run just before it (a downsampling
layer between two stages counts with the stage it feeds; the blocks of a plain ViT up to a tapped
block count with that tap). Modules that run before the first stage (the stem) and after the last
one (norm, heads, decoders) are listed under their own names.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from vitlab.checkpoints.atomic import to_json
from vitlab.cli.common import add_flags

if TYPE_CHECKING:
    from torch import nn

COMMAND = "flops"
HELP = "multiply-adds (GMACs) per stage and in total, with the published figure where known"

# name -> (published GMACs, image side or (height, width), frames or None, where the number is published)
PUBLISHED_GMACS = {
    "volo_d1": (6.8, 224, None, "VOLO, arXiv 2106.13112, Table 3"),
    "volo_d2": (14.1, 224, None, "VOLO, arXiv 2106.13112, Table 3"),
    "volo_d3": (20.6, 224, None, "VOLO, arXiv 2106.13112, Table 3"),
    "volo_d4": (43.8, 224, None, "VOLO, arXiv 2106.13112, Table 3"),
    "volo_d5": (69.0, 224, None, "VOLO, arXiv 2106.13112, Table 3"),
    "uniformer_small": (3.6, 224, None, "UniFormer, arXiv 2201.09450, Table 1"),
    "uniformer_base": (8.3, 224, None, "UniFormer, arXiv 2201.09450, Table 1"),
    "uniformer_video_small": (41.8, 224, 16, "UniFormer, arXiv 2201.04676, Table 1 (one 16x224^2 view)"),
    "swin_tiny": (4.5, 224, None, "Swin, arXiv 2103.14030, Table 1"),
    "swin_small": (8.7, 224, None, "Swin, arXiv 2103.14030, Table 1"),
    "swin_base": (15.4, 224, None, "Swin, arXiv 2103.14030, Table 1"),
    "pale_tiny": (4.2, 224, None, "Pale Transformer, arXiv 2112.14000, Table 2"),
    "pale_small": (9.0, 224, None, "Pale Transformer, arXiv 2112.14000, Table 2"),
    "pale_base": (15.6, 224, None, "Pale Transformer, arXiv 2112.14000, Table 2"),
    "segvit_vit_large": (637.9, 640, None, "SegViT, arXiv 2210.05844, Table 4 (ADE20K, 640x640)"),
    "segvit_vit_large_shrunk": (373.5, 640, None, "SegViT, arXiv 2210.05844, Table 4 (ADE20K, 640x640)"),
    "mask_rcnn_uniformer_small_h14": (269.0, (800, 1280), None, "UniFormer object_detection model zoo (1280x800)"),
    "mask_rcnn_uniformer_base_h14": (399.0, (800, 1280), None, "UniFormer object_detection model zoo (1280x800)"),
    "cascade_mask_rcnn_uniformer_small_h14": (747.0, (800, 1280), None,
                                              "UniFormer object_detection model zoo (1280x800)"),
    "cascade_mask_rcnn_uniformer_base_h14": (878.0, (800, 1280), None,
                                             "UniFormer object_detection model zoo (1280x800)"),
    "mask_rcnn_swin_tiny": (267.0, (800, 1280), None, "Swin-Transformer-Object-Detection model zoo (1280x800)"),
    "topdown_uniformer_small": (4.7, (256, 192), None, "UniFormer pose_estimation model zoo (256x192)"),
    "topdown_uniformer_base": (9.2, (256, 192), None, "UniFormer pose_estimation model zoo (256x192)"),
}


def add_arguments(p):
    add_flags(p, "model", "img_size", "json", model={"required": True},
              img_size={"help": "input side in pixels (default: the model's own size)"})
    p.add_argument("--img", dest="img_size", type=int, help=argparse.SUPPRESS)  # older spelling
    p.add_argument("--frames", type=int, help="clip length for video models (default: the model's own)")
    p.add_argument("--shape", type=int, nargs=2, metavar=("H", "W"),
                   help="input height and width, for models that take any size (detectors count at 800 1280 "
                        "by default, as mmdetection's get_flops)")
    p.add_argument("--depth", type=int, default=0, help="also list multiply-adds per module, cut at this depth")


def record_call_order(model: nn.Module):
    """Context: forward pre-hooks that note when each sub-module is first called -> {path: index}."""
    import contextlib

    @contextlib.contextmanager
    def recording():
        order: dict[str, int] = {}

        def note(path):
            def hook(module, args):  # returns None: the inputs pass through unchanged
                order.setdefault(path, len(order))
            return hook
        handles = [m.register_forward_pre_hook(note(name)) for name, m in model.named_modules() if name]
        try:
            yield order
        finally:
            for h in handles:
                h.remove()
    return recording()


def _stage_modules(model: nn.Module, known: set[str]) -> list[dict]:
    """feature_info entries whose module exists (as given, or under ``backbone.`` for a segmentor)."""
    info = list(getattr(model, "feature_info", None) or [])
    for prefix in ("", "backbone."):
        found = [{**f, "module": prefix + f["module"]} for f in info if prefix + f["module"] in known]
        if info and len(found) == len(info):
            return found
    return []


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


def group_by_stage(model: nn.Module, per_module: dict[str, int], call_order: dict[str, int]) -> list[dict]:
    """Ordered rows from exclusive per-module counts: stem modules, one row per stage, then the rest.

    A stage (a ``feature_info`` module) spans the calls of its sub-tree. Modules in the same container
    as the stage modules (blocks of a plain ViT, a downsampling layer between stages) belong to the
    next stage that runs after them; other modules run before the first stage form the stem, and
    those after the last stage (norm, heads, decoders) get rows of their own.
    """
    stages = _stage_modules(model, {name for name, _ in model.named_modules() if name})
    within = lambda path, root: path == root or path.startswith(root + ".")  # noqa: E731
    spans = []
    for s in stages:  # a stage container may be iterated rather than called: use its sub-tree's calls
        calls = [i for p, i in call_order.items() if within(p, s["module"])]
        spans.append((min(calls), max(calls)) if calls else (-1, -2))
    containers = {_parent(s["module"]) for s in stages}

    def label(path: str) -> str:
        """The shortest prefix of ``path`` that does not contain a stage ("decode_head", "backbone.norm")."""
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            prefix = ".".join(parts[:k])
            if not any(within(s["module"], prefix) for s in stages):
                return prefix
        return path
    rows: dict[str, dict] = {}
    for path, macs in per_module.items():
        pos = call_order.get(path)
        stage = None
        if pos is not None and stages:
            inside = [i for i, (lo, hi) in enumerate(spans) if lo <= pos <= hi]
            later = [i for i, (lo, _) in enumerate(spans) if lo > pos]
            if inside:
                stage = inside[-1]
            elif later and any(c == "" or path.startswith(c + ".") for c in containers):
                stage = later[0]
        if stage is not None:
            key, module, reduction, first = f"stage{stage + 1}", stages[stage]["module"], \
                stages[stage].get("reduction"), spans[stage][0]
        elif pos is None:  # work in the model's own forward, outside any sub-module
            key, module, reduction, first = "(other)", "", None, len(call_order) + 1
        else:
            key = module = label(path)
            reduction, first = None, pos
        row = rows.setdefault(key, {"name": key, "module": module, "reduction": reduction, "macs": 0, "order": first})
        row["order"] = min(row["order"], first)
        row["macs"] += macs
    ordered = sorted(rows.values(), key=lambda r: r["order"])
    return [{k: v for k, v in r.items() if k != "order"} for r in ordered]


def _build(spec: str, img: int | None, frames: int | None, device: str) -> nn.Module:
    """The architecture only (weights do not change the count), on ``device`` ('meta' costs no memory).

    ``spec`` is a registered name, a model folder or a run folder; a folder's config is read, its
    weights are not.
    """
    import torch

    from vitlab.checkpoints.hub import read_config
    from vitlab.export.inputs import size_overrides
    from vitlab.models.registry import create_model
    if Path(spec).is_dir():
        config = read_config(spec)
        name, kwargs = config["architecture"], dict(config.get("kwargs", {}))
        if config.get("num_classes") is not None and "num_classes" not in kwargs:
            kwargs["num_classes"] = config["num_classes"]
    else:
        name, kwargs = spec, {}
    with torch.device(device):
        model = create_model(name, **kwargs)
        overrides = size_overrides(model, img, frames)
        if overrides:
            try:
                model = create_model(name, **kwargs, **overrides)
            except TypeError as e:
                raise ValueError(f"{name} cannot be rebuilt with {overrides} ({e})") from e
    return model


def measure(spec: str, img: int | None = None, frames: int | None = None, depth: int = 64,
            hw: tuple[int, int] | None = None) -> dict:
    """Count multiply-adds of one forward pass of batch 1; tries the meta device first (no compute).

    Without ``img``/``hw`` the model's ``pretrained_cfg['flops_input_size']`` (detectors: 800x1280) or its
    ``input_size`` is used.
    """
    from vitlab.bench.flops import count_macs
    from vitlab.export.inputs import example_inputs
    last_error = None
    for device in ("meta", "cpu"):
        try:
            model = _build(spec, img, frames, device)
            size = getattr(model, "pretrained_cfg", {}).get("flops_input_size")
            shape = hw or (tuple(size[-2:]) if size and not img else None)
            inputs = example_inputs(model, batch=1, img=img, frames=frames, device=device, hw=shape)
            with record_call_order(model) as call_order:
                total, per_module = count_macs(model, *inputs, depth=depth)
            break
        except (NotImplementedError, RuntimeError) as e:  # an op without a meta kernel: count on CPU
            last_error = e
    else:
        raise last_error
    return {"model": getattr(model, "model_name", spec), "input_shape": list(inputs[0].shape),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "macs": total, "gmacs": total / 1e9,
            "stages": group_by_stage(model, per_module, call_order), "per_module": per_module}


def run(args) -> int:
    from vitlab.bench.flops import group_by_prefix
    if args.shape and args.img_size:
        raise ValueError("give either --img-size (a square side) or --shape H W, not both")
    if args.shape and min(args.shape) < 32:
        raise ValueError(f"--shape expects a height and width of at least 32 pixels, got {args.shape}")
    result = measure(args.model, args.img_size, args.frames, hw=args.shape)
    published = PUBLISHED_GMACS.get(result["model"])
    hw = tuple(result["input_shape"][-2:])
    frames = result["input_shape"][2] if len(result["input_shape"]) == 5 else None
    if published and (published[1] if isinstance(published[1], tuple) else (published[1],) * 2) == hw \
            and published[2] == frames:
        result["published_gmacs"], result["published_source"] = published[0], published[3]
        result["ratio_to_published"] = result["gmacs"] / published[0]
    modules = group_by_prefix(result.pop("per_module"), result["macs"], args.depth) if args.depth else None
    if args.json:
        print(to_json({**result, **({"modules": modules} if modules else {})}, indent=2))
        return 0
    print(f"{result['model']}: input {tuple(result['input_shape'])}, {result['params_m']:.2f}M params")
    rows = result["stages"]
    width = max([5] + [len(r["name"]) for r in rows])
    print(f"{'part':<{width}}  {'module':<20} {'stride':>6} {'GMACs':>10} {'share':>7}")
    for row in rows:
        stride = f"1/{row['reduction']}" if row["reduction"] else ""
        module = row["module"] if row["module"] != row["name"] else ""
        print(f"{row['name']:<{width}}  {module:<20} {stride:>6} {row['macs'] / 1e9:>10.3f} "
              f"{100 * row['macs'] / max(result['macs'], 1):>6.1f}%")
    print(f"{'total':<{width}}  {'':<20} {'':>6} {result['gmacs']:>10.3f}")
    if "published_gmacs" in result:
        print(f"published: {result['published_gmacs']} GMACs ({result['published_source']}); "
              f"ours / published = {result['ratio_to_published']:.3f}")
    if modules:
        print(f"\nper module (depth {args.depth}):")
        for name, macs in modules.items():
            print(f"  {name:<40} {macs / 1e9:>10.4f}")
    print("GMACs = multiply-adds / 1e9 (torch FLOP counter / 2); element-wise ops are not counted.")
    return 0

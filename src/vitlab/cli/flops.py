"""``vitlab flops``: multiply-adds per stage and in total (GMACs, the unit the papers report).

Counts come from ``vitlab.bench.flops.count_macs`` (PyTorch's FLOP counter, halved: it counts 2
FLOPs per multiply-add). It counts matrix products, convolutions and attention; element-wise
work (norms, activations, softmax, residual adds, pooling, the outlook/overlap-add sums) is not
counted, as in fvcore/mmcv, whose numbers the papers quote.

Stages follow the model's ``feature_info``: modules before the first stage are listed under their
own names (the stem), every module from one stage up to the next belongs to that stage (so a
downsampling layer between stages counts with the stage before it), and modules after the last
stage (norm, heads, decoders) are listed under their own names.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

COMMAND = "flops"
HELP = "multiply-adds (GMACs) per stage and in total, with the published figure where known"

# name -> (published GMACs, image side, frames or None, where the number is published)
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
}


def add_arguments(p):
    p.add_argument("--model", required=True, help="model name or a folder from save_pretrained")
    p.add_argument("--img", type=int, help="input side in pixels (default: the model's own size)")
    p.add_argument("--frames", type=int, help="clip length for video models (default: the model's own)")
    p.add_argument("--depth", type=int, default=0, help="also list multiply-adds per module, cut at this depth")
    p.add_argument("--json", action="store_true", help="print JSON")


def _module_order(model: nn.Module) -> dict[str, int]:
    return {name: i for i, (name, _) in enumerate(model.named_modules()) if name}


def _stage_modules(model: nn.Module, order: dict[str, int]) -> list[dict]:
    """feature_info entries whose module exists (tried as given and under ``backbone.``), in model order."""
    info = list(getattr(model, "feature_info", None) or [])
    for prefix in ("", "backbone."):
        found = [{**f, "module": prefix + f["module"]} for f in info if prefix + f["module"] in order]
        if info and len(found) == len(info):
            return sorted(found, key=lambda f: order[f["module"]])
    return []


def group_by_stage(model: nn.Module, per_module: dict[str, int]) -> list[dict]:
    """Turn exclusive per-module counts into ordered rows: stem modules, stages, then the rest."""
    order = _module_order(model)
    stages = _stage_modules(model, order)
    starts = [order[s["module"]] for s in stages]
    if stages:
        last = stages[-1]["module"]
        end = max(i for n, i in order.items() if n == last or n.startswith(last + "."))
    rows: dict[str, dict] = {}
    for path, macs in per_module.items():
        pos = order.get(path)
        if pos is None:  # work done outside any sub-module (in the model's own forward)
            key, module, reduction, first = "(other)", "", None, len(order)
        elif stages and starts[0] <= pos <= end:
            i = max(j for j, s in enumerate(starts) if s <= pos)
            key, module, reduction, first = f"stage{i + 1}", stages[i]["module"], stages[i].get("reduction"), starts[i]
        else:
            key = module = path.split(".")[0]
            reduction, first = None, pos
        row = rows.setdefault(key, {"name": key, "module": module, "reduction": reduction, "macs": 0, "order": first})
        row["order"] = min(row["order"], first)
        row["macs"] += macs
    ordered = sorted(rows.values(), key=lambda r: r["order"])
    return [{k: v for k, v in r.items() if k != "order"} for r in ordered]


def _build(spec: str, img: int | None, frames: int | None, device: str) -> nn.Module:
    """The architecture only (weights do not change the count), on ``device`` ('meta' costs no memory)."""
    from vitlab.checkpoints.hub import read_config
    from vitlab.export.inputs import default_sizes
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
        _, side, clip = default_sizes(model)
        overrides = {}
        if img and img != side:
            overrides["img_size"] = img
        if frames and clip is not None and frames != clip:
            overrides["num_frames"] = frames
        if overrides:
            try:
                model = create_model(name, **kwargs, **overrides)
            except TypeError as e:
                raise ValueError(f"{name} cannot be rebuilt with {overrides} ({e})") from e
    return model


def measure(spec: str, img: int | None = None, frames: int | None = None, depth: int = 64) -> dict:
    """Count multiply-adds of one forward pass of batch 1; tries the meta device first (no compute)."""
    from vitlab.bench.flops import count_macs
    from vitlab.export.inputs import example_inputs
    last_error = None
    for device in ("meta", "cpu"):
        try:
            model = _build(spec, img, frames, device)
            inputs = example_inputs(model, batch=1, img=img, frames=frames, device=device)
            total, per_module = count_macs(model, *inputs, depth=depth)
            break
        except (NotImplementedError, RuntimeError) as e:  # an op without a meta kernel: count on CPU
            last_error = e
    else:
        raise last_error
    return {"model": getattr(model, "model_name", spec), "input_shape": list(inputs[0].shape),
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "macs": total, "gmacs": total / 1e9,
            "stages": group_by_stage(model, per_module), "per_module": per_module}


def run(args) -> int:
    from vitlab.bench.flops import group_by_prefix
    result = measure(args.model, args.img, args.frames)
    published = PUBLISHED_GMACS.get(result["model"])
    side = result["input_shape"][-1]
    frames = result["input_shape"][2] if len(result["input_shape"]) == 5 else None
    if published and (published[1], published[2]) == (side, frames):
        result["published_gmacs"], result["published_source"] = published[0], published[3]
        result["ratio_to_published"] = result["gmacs"] / published[0]
    modules = group_by_prefix(result.pop("per_module"), result["macs"], args.depth) if args.depth else None
    if args.json:
        print(json.dumps({**result, **({"modules": modules} if modules else {})}, indent=2))
        return 0
    print(f"{result['model']}: input {tuple(result['input_shape'])}, {result['params_m']:.2f}M params")
    print(f"{'part':<14} {'module':<28} {'stride':>6} {'GMACs':>10} {'share':>7}")
    for row in result["stages"]:
        stride = f"1/{row['reduction']}" if row["reduction"] else ""
        print(f"{row['name']:<14} {row['module']:<28} {stride:>6} {row['macs'] / 1e9:>10.3f} "
              f"{100 * row['macs'] / max(result['macs'], 1):>6.1f}%")
    print(f"{'total':<14} {'':<28} {'':>6} {result['gmacs']:>10.3f}")
    if "published_gmacs" in result:
        print(f"published: {result['published_gmacs']} GMACs ({result['published_source']}); "
              f"ours / published = {result['ratio_to_published']:.3f}")
    if modules:
        print(f"\nper module (depth {args.depth}):")
        for name, macs in modules.items():
            print(f"  {name:<40} {macs / 1e9:>10.4f}")
    print("GMACs = multiply-adds / 1e9 (torch FLOP counter / 2); element-wise ops are not counted.")
    return 0

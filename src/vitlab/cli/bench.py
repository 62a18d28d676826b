"""``vitlab bench``: parameters, GMACs, inference / train-step images/s and peak memory of a model."""
from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from vitlab.checkpoints.atomic import to_json
from vitlab.cli.common import add_flags

if TYPE_CHECKING:
    import torch

COMMAND = "bench"
HELP = "measure params, GMACs (multiply-adds), images/s and peak memory of a model"


def add_arguments(p):
    add_flags(p, "model", "batch_size", "img_size", "device", "threads", "json", model={"required": True},
              batch_size={"default": 8, "help": "batch size (default 8)"},
              img_size={"help": "input side in pixels (default: the model's pretrained_cfg)"},
              device={"default": "cpu", "help": "default cpu; auto: CUDA when available"})
    p.add_argument("--batch", dest="batch_size", type=int, default=8, help=argparse.SUPPRESS)  # older spellings
    p.add_argument("--img", dest="img_size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--frames", type=int, default=None, help="clip length for video models")
    p.add_argument("--train", action="store_true", help="also time a training step (forward + backward + update)")
    p.add_argument("--amp", default=None, choices=["bf16", "fp16"], help="autocast dtype")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model first")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--no-flops", action="store_true", help="skip the multiply-add count")
    p.add_argument("--reference", action="store_true",
                   help="also time the published code's computation on the same weights (unfold/fold outlook, "
                        "explicit-softmax attention, per-pale loop) and print vitlab / reference speed ratios")


def build_for_bench(spec: str, img: int | None):
    """A registered name (random weights), a model folder or a run folder, built for input side ``img``."""
    from vitlab.cli.common import load_model
    try:
        return load_model(spec, **({"img_size": img} if img else {}))
    except TypeError:
        if not os.path.isdir(spec):
            from vitlab.models.registry import get_entry, list_models
            entry = get_entry(spec)
            if entry.is_family:
                raise ValueError(f"'{spec}' is a family name: bench needs a variant, e.g. "
                                 f"{', '.join(list_models(family=entry.family)[:4])}") from None
        if not img:
            raise
        return load_model(spec)  # no img_size argument: the model takes the input size as it comes


def example_input(model, batch: int, img: int | None, frames: int | None) -> torch.Tensor:
    import torch
    shape = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    if img:
        shape = shape[:-2] + (img, img)
    if frames:
        shape = (shape[0], frames) + shape[-2:]
    return torch.randn(batch, *shape)


def format_result(r) -> str:
    fmt = lambda v, unit="": "n/a" if v is None else f"{v:,.2f}{unit}"  # noqa: E731
    lines = [
        f"model          {r.model}  (input {'x'.join(map(str, r.input_shape))}, batch {r.batch}, {r.dtype}, "
        f"{r.device}, {r.threads} threads)",
        f"params         {r.params_m:.2f} M",
        f"GMACs          {fmt(r.gmacs)}  (multiply-adds per image)",
        f"inference      {fmt(r.infer_img_s)} img/s   peak memory {fmt(r.infer_peak_mb, ' MB')}",
    ]
    if r.train_img_s is not None:
        lines.append(f"train step     {fmt(r.train_img_s)} img/s   peak memory {fmt(r.train_peak_mb, ' MB')}")
    lines += [f"note           {n}" for n in r.notes]
    return "\n".join(lines)


def run(args) -> int:
    import torch

    from vitlab.bench.throughput import benchmark_model
    from vitlab.cli.common import set_threads
    set_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    if args.reference and args.compile:
        raise ValueError("--reference compares the eager paths; leave out --compile")
    device = torch.device(args.device)
    model = build_for_bench(args.model, args.img_size).to(device)
    x = example_input(model, args.batch_size, args.img_size, args.frames).to(device)
    if args.channels_last and x.ndim == 4:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    flops_model = model
    if args.compile:
        model = torch.compile(model)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    result = benchmark_model(model, x, name=getattr(flops_model, "model_name", args.model), train=args.train,
                             warmup=args.warmup, iters=args.iters, amp_dtype=amp, count_flops=False)
    if not args.no_flops:
        from vitlab.bench.flops import count_macs
        result.gmacs = round(count_macs(flops_model, x[:1])[0] / 1e9, 3)
    out = result.as_dict()
    text = format_result(result)
    if args.reference:
        from vitlab.bench.reference import compare_with_reference
        comparison = compare_with_reference(flops_model, x, args.train, max(args.warmup, 1), args.iters, amp)
        out["reference"] = comparison
        text += "\n" + format_comparison(comparison)
    print(to_json(out, indent=2) if args.json else text)
    return 0


def format_comparison(c: dict) -> str:
    lines = [f"vs reference   inference {c['vitlab_infer_img_s']:,.2f} vs {c['infer_img_s']:,.2f} img/s "
             f"(x{c['infer_speedup']:.2f})"]
    if "train_img_s" in c:
        lines.append(f"vs reference   train step {c['vitlab_train_img_s']:,.2f} vs {c['train_img_s']:,.2f} img/s "
                     f"(x{c['train_speedup']:.2f})")
    lines.append(f"note           reference = the published code's computation on the same weights, timed interleaved "
                 f"with vitlab's; outputs agree to {c['max_abs_diff']:.1e}")
    return "\n".join(lines)

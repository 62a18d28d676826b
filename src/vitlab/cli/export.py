"""``vitlab export``: write a model as ONNX or TorchScript, reload it, and check it against PyTorch."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

COMMAND = "export"
HELP = "export a model (name or saved model folder) to ONNX or TorchScript and verify the file against PyTorch"


def add_arguments(p):
    p.add_argument("--model", required=True, help="model name (see `vitlab models`) or a folder from save_pretrained")
    p.add_argument("--checkpoint", help="weights to load (.pth/.safetensors/model folder), strict")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="output format (default onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or 18+; default 18)")
    p.add_argument("--img", type=int, help="input side in pixels (default: the model's own size)")
    p.add_argument("--frames", type=int, help="clip length for video models (default: the model's own)")
    p.add_argument("--batch", type=int, default=2, help="example batch size (default 2)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: leave the batch dimension free")
    p.add_argument("--no-optimize", action="store_true", help="ONNX: skip the graph optimisation pass (faster export)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |exported - PyTorch| (default 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random example and test inputs")
    p.add_argument("--output", "-o", help="output file (default: <model>.onnx / <model>.pt)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--debug", action="store_true", help="show full tracebacks")


def build_model(spec: str, checkpoint: str | None, img: int | None, frames: int | None):
    """Build (or load) the model, rebuilt at ``img``/``frames`` when those differ from its own size."""
    from vitlab.export import load_model
    from vitlab.export.inputs import default_sizes, size_overrides
    model = load_model(spec, checkpoint)
    _, side, clip = default_sizes(model)
    overrides = size_overrides(model, img, frames)
    if overrides:
        try:
            model = load_model(spec, checkpoint, **overrides)
        except TypeError as e:
            raise ValueError(f"{spec} cannot be rebuilt with {overrides} ({e}); export it at its own size "
                             f"({side} px{'' if clip is None else f', {clip} frames'})") from e
    return model


def run(args) -> int:
    from vitlab.export import (ExportError, example_inputs, export_onnx, export_torchscript, verify_onnx,
                               verify_torchscript)
    if args.batch < 1:
        raise ValueError(f"--batch must be at least 1, got {args.batch}")
    if args.format == "torchscript" and args.dynamic_batch:
        raise ValueError("--dynamic-batch applies to ONNX; a traced TorchScript module keeps the shapes it was traced with")
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.checkpoint, args.img, args.frames)
    name = getattr(model, "model_name", Path(args.model).name)
    batch = max(args.batch, 2) if args.dynamic_batch else args.batch
    inputs = example_inputs(model, batch=batch, img=args.img, frames=args.frames,
                            generator=torch.Generator().manual_seed(args.seed))
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    output = Path(args.output or f"{name}{suffix}")
    try:
        if args.format == "onnx":
            export_onnx(model, inputs, output, opset=args.opset, dynamic_batch=args.dynamic_batch,
                        optimize=not args.no_optimize)
            check = verify_onnx(model, output, inputs, dynamic_batch=args.dynamic_batch, seed=args.seed + 1)
            runtime = "onnxruntime " + __import__("onnxruntime").__version__
        else:
            export_torchscript(model, inputs, output)
            check = verify_torchscript(model, output, inputs, seed=args.seed + 1)
            runtime = "torch.jit.load"
    except ExportError as e:
        if args.debug:
            raise
        print(f"vitlab export: error: {e}", file=sys.stderr)
        return 1
    ok = check.ok(args.atol)
    if args.json:
        print(json.dumps({"model": name, "input_shape": list(inputs[0].shape), "opset": args.opset
                          if args.format == "onnx" else None, "dynamic_batch": args.dynamic_batch,
                          "bytes": output.stat().st_size, "atol": args.atol, "ok": ok, **check.as_dict()}, indent=2))
    else:
        what = f"ONNX opset {args.opset}" if args.format == "onnx" else "TorchScript (traced)"
        extra = ", dynamic batch" if args.dynamic_batch else ""
        print(f"exported {name} -> {output} ({what}, {output.stat().st_size / 1e6:.1f} MB, input "
              f"{tuple(inputs[0].shape)}{extra})")
        per = ", ".join(f"{k} {v:.2e}" for k, v in check.max_abs_diff_per_output.items())
        print(f"verified with {runtime} on batch {', '.join(map(str, check.batch_sizes))}: max |exported - torch| = "
              f"{check.max_abs_diff:.2e} ({per}) {'<=' if ok else '>'} {args.atol:g}: {'OK' if ok else 'FAILED'}")
    if not ok:
        print(f"vitlab export: error: the exported model differs from PyTorch by {check.max_abs_diff:.3g} "
              f"(allowed {args.atol:g}); the file was kept at {output} for inspection", file=sys.stderr)
        return 1
    return 0

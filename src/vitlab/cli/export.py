"""``vitlab export``: write a model as ONNX or TorchScript, reload it, and check it against PyTorch.

The file appears at ``--output`` only once its runtime (onnxruntime, ``torch.jit.load``) has loaded it
and reproduced PyTorch within ``--atol``; otherwise the command fails with one line saying why
(an :class:`~vitlab.export.onnx.ExportError`) and leaves ``--output`` as it was.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from vitlab.checkpoints.atomic import to_json
from vitlab.cli.common import add_flags, load_model

COMMAND = "export"
HELP = "export a model (name, model folder or run folder) to ONNX or TorchScript and verify the file against PyTorch"


def add_arguments(p):
    add_flags(p, "model", "checkpoint", "img_size", "batch_size", "output", "json", "seed",
              model=dict(required=True),
              img_size=dict(help="input side in pixels (default: the model's own size)"),
              batch_size=dict(default=2, help="example batch size (default 2)"),
              output=dict(metavar="FILE", help="output file (default: <model>.onnx / <model>.pt)"),
              seed=dict(default=0, help="seed of the random example and test inputs (default 0)"))
    # earlier spellings, still accepted
    p.add_argument("--img", dest="img_size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch", dest="batch_size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="output format (default onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset (17 or 18+; default 18)")
    p.add_argument("--frames", type=int, help="clip length for video models (default: the model's own)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: leave the batch dimension free")
    p.add_argument("--dynamic-size", action="store_true",
                   help="ONNX: leave height and width free (multiples of the model's stride) where the model allows "
                        "it; verified at two further sizes, refused in one line where it cannot be")
    p.add_argument("--no-optimize", action="store_true", help="ONNX: skip the graph optimisation pass (faster export)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest allowed |exported - PyTorch| (default 1e-4)")
    p.add_argument("--keep-on-failure", action="store_true",
                   help="keep a file that fails to load or verify at <output stem>.failed.onnx / .failed.pt")


def build_model(spec: str, checkpoint: str | None, img: int | None, frames: int | None):
    """Build (or load) the model, rebuilt at ``img``/``frames`` when those differ from its own size."""
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


def interpolate_position_embeddings(model) -> list[str]:
    """Turn on ``dynamic_img_size`` (position embedding interpolated per input) where a module has it off.

    Such a model (VOLO) refuses other sizes in PyTorch; ``--dynamic-size`` asks for them, so the
    exported file (and the PyTorch model it is verified against) interpolates, and a note says so.
    """
    changed = [n or "model" for n, m in model.named_modules() if getattr(m, "dynamic_img_size", None) is False]
    for _, m in model.named_modules():
        if getattr(m, "dynamic_img_size", None) is False:
            m.dynamic_img_size = True
    if not changed:
        return []
    return [f"{', '.join(changed)}: dynamic_img_size=True, so the position embedding is interpolated (bicubic) "
            f"at sizes other than the one it was built for"]


def run(args) -> int:
    import torch

    from vitlab.export.inputs import example_inputs
    from vitlab.export.verify import export_and_verify
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.atol >= 0:
        raise ValueError(f"--atol must be a non-negative number, got {args.atol}")
    if args.format == "torchscript" and args.dynamic_batch:
        raise ValueError("--dynamic-batch applies to ONNX; a traced TorchScript module keeps the shapes it was "
                         "traced with")
    if args.format == "torchscript" and args.dynamic_size:
        raise ValueError("--dynamic-size applies to ONNX; a traced TorchScript module keeps the height and width it "
                         "was traced with")
    torch.manual_seed(args.seed)
    model = build_model(args.model, args.checkpoint, args.img_size, args.frames)
    name = getattr(model, "model_name", Path(args.model).name)
    if hasattr(model, "rpn_head"):
        raise ValueError(f"{name} is a two-stage detector: its proposal selection and RoI routing have data-dependent "
                         f"shapes that neither ONNX exporter traces; export its backbone instead "
                         f"(--model {getattr(model.backbone, 'model_name', 'the backbone name')})")
    notes = interpolate_position_embeddings(model) if args.dynamic_size else []
    batch = max(args.batch_size, 2) if args.dynamic_batch else args.batch_size
    inputs = example_inputs(model, batch=batch, img=args.img_size, frames=args.frames,
                            generator=torch.Generator().manual_seed(args.seed))
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    output = Path(args.output or f"{name}{suffix}")
    check = export_and_verify(model, inputs, output, args.format, opset=args.opset, dynamic_batch=args.dynamic_batch,
                              optimize=not args.no_optimize, atol=args.atol, seed=args.seed + 1,
                              keep_on_failure=args.keep_on_failure, dynamic_hw=args.dynamic_size)
    from vitlab.export.onnx import model_stride
    from vitlab.export.preprocess import write_preprocess
    preprocess = write_preprocess(model, output, inputs[0].shape, format=args.format,
                                  dynamic_batch=args.dynamic_batch, dynamic_hw=args.dynamic_size,
                                  stride=model_stride(model), notes=notes)
    if args.format == "onnx":
        import onnxruntime
        runtime = f"onnxruntime {onnxruntime.__version__}"
    else:
        runtime = "torch.jit.load"
    size = output.stat().st_size
    if args.json:
        print(to_json({"model": name, "input_shape": list(inputs[0].shape), "opset": args.opset
                          if args.format == "onnx" else None, "dynamic_batch": args.dynamic_batch,
                          "dynamic_size": args.dynamic_size, "preprocess": str(preprocess), "notes": notes,
                          "bytes": size, "atol": args.atol, "ok": True, **check.as_dict()}, indent=2))
    else:
        what = f"ONNX opset {args.opset}" if args.format == "onnx" else "TorchScript (traced)"
        dynamic = (["batch"] if args.dynamic_batch else []) + ([f"height/width (multiples of {model_stride(model)})"]
                                                               if args.dynamic_size else [])
        extra = f", dynamic {' and '.join(dynamic)}" if dynamic else ""
        print(f"exported {name} -> {output} ({what}, {size / 1e6:.1f} MB, input {tuple(inputs[0].shape)}{extra})")
        per = ", ".join(f"{k} {v:.2e}" for k, v in check.max_abs_diff_per_output.items())
        sizes = f" at {', '.join(f'{h}x{w}' for h, w in check.input_sizes)}" if args.dynamic_size else ""
        print(f"verified with {runtime} on batch {', '.join(map(str, check.batch_sizes))}{sizes}: max |exported - "
              f"torch| = {check.max_abs_diff:.2e} ({per}) <= {args.atol:g}: OK")
        for note in notes:
            print(f"note: {note}")
        print(f"preprocessing -> {preprocess}")
    return 0

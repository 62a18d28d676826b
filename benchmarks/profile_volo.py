"""Top operators of a VOLO-D1 training step (and inference) under torch.profiler, eager or compiled.

    python benchmarks/profile_volo.py --batch 8 --img 224 --threads 2
    python benchmarks/profile_volo.py --threads 2 --compile        # eager and compiled step, interleaved
    python benchmarks/profile_volo.py --threads 2 --outlook-op     # the outlook kernel alone, three ways

``--compile``: the step (forward_train, loss, backward, AdamW) eager and under ``torch.compile`` on
the same weights; prints the compile time, dynamo's graph and graph-break counts, the interleaved
medians and one profile of each (in the compiled one, inductor's fused kernels appear as
``CompiledFxGraph`` calls, extern kernels such as ``aten::mm`` by name). Set
``TORCH_LOGS=output_code`` to see inductor's generated code. ``--outlook-op``: outlook attention
forward + backward at the stage-1 shape of VOLO-D1 (28x28, 192 channels, 6 heads), eager autograd
function vs the compiled functional form (inductor derives the backward) vs the compiled custom op.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import vitlab
from vitlab.bench.throughput import time_interleaved


def _profile(step, rows: int, title: str) -> None:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(title)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def _training_step(model, x, target, compiled: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=compiled)

    def loss_fn(x, target):
        out = model.forward_train(x)  # class logits + token logits (the token-labeling loss's inputs)
        return F.cross_entropy(out.logits, target) + 0.5 * out.aux_logits.mean()
    loss_fn = torch.compile(loss_fn) if compiled else loss_fn

    def step():
        loss_fn(x, target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def compare_compiled(args, model, x, target) -> None:
    from torch._dynamo.utils import counters
    steps = {"eager": _training_step(model, x, target, False),
             "compiled": _training_step(copy.deepcopy(model), x, target, True)}
    t0 = time.perf_counter()
    steps["compiled"]()
    print(f"compile (first compiled step): {time.perf_counter() - t0:.1f}s; dynamo graphs "
          f"{counters['stats']['unique_graphs']}, graph breaks {sum(counters['graph_break'].values())}")
    sec = time_interleaved(steps, x.device, warmup=1, iters=args.iters)
    print(f"median step: eager {sec['eager']:.3f}s, compiled {sec['compiled']:.3f}s, "
          f"compiled vs eager x{sec['eager'] / sec['compiled']:.2f} ({args.iters} interleaved runs)")
    for name, step in steps.items():
        _profile(step, args.rows, f"{name} training step")


def compare_outlook_op(args) -> None:
    from vitlab.attention import outlook
    from vitlab.attention.outlook_op import outlook_aggregate
    B, H, heads, d = args.batch, 28, 6, 32
    torch.manual_seed(0)
    v = torch.randn(B, H, H, heads, d, requires_grad=True)
    attn = torch.randn(B, heads, (H // 2) ** 2, 9, 9).softmax(-1).requires_grad_()
    grad = torch.randn(B, H, H, heads, d)
    fns = {"eager autograd function": outlook._FoldFreeOutlook.apply,
           "compiled functional form": torch.compile(outlook._fold_free_functional),
           "compiled custom op": torch.compile(outlook_aggregate)}

    def run(fn):
        return lambda: torch.autograd.grad(fn(v, attn, 3, 1, 2), (v, attn), grad)
    steps = {k: run(fn) for k, fn in fns.items()}
    for step in steps.values():
        step()  # compiles
    sec = time_interleaved(steps, v.device, warmup=1, iters=args.iters)
    for k, s in sec.items():
        print(f"outlook fwd+bwd {B}x{H}x{H}x{heads * d}: {k:26s} {s * 1e3:8.1f} ms "
              f"(x{sec['eager autograd function'] / s:.2f} vs eager)")
    for k, step in steps.items():
        _profile(step, args.rows, k)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="volo_d1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--implementation", default="auto", help="outlook attention: auto, torch or reference")
    p.add_argument("--compile", action="store_true", help="eager vs torch.compile training step")
    p.add_argument("--outlook-op", action="store_true", help="the outlook kernel alone: eager vs compiled forms")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.outlook_op:
        compare_outlook_op(args)
        return 0
    torch.manual_seed(0)
    model = vitlab.create_model(args.model).train()
    for m in model.modules():
        if hasattr(m, "implementation"):
            m.implementation = args.implementation
    x = torch.randn(args.batch, 3, args.img, args.img)
    target = torch.randint(0, 1000, (args.batch,))
    print(f"{args.model} training step, batch {args.batch} at {args.img}, outlook={args.implementation}, "
          f"{torch.get_num_threads()} threads")
    if args.compile:
        compare_compiled(args, model, x, target)
        return 0
    step = _training_step(model, x, target, False)
    step()  # warm-up
    _profile(step, args.rows, "eager training step")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

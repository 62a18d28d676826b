"""Side-by-side speed and memory: vitlab's fused paths vs the reference computations, in one process.

    python benchmarks/compare.py                         # CPU defaults: batch 8 at 224, fp32
    python benchmarks/compare.py --models volo_d1 --kernel-batch 32 --out bench.md

For every model: images/s for inference (eval, no grad) and for a training step (forward,
cross-entropy, backward, SGD step; vitlab models run ``forward_train``, so a token-labeling aux head
takes part), and the peak memory of each, for vitlab and for the reference path of
``vitlab.bench.reference`` (same weights; the outputs are checked to agree). Runs alternate between the
two paths so that load on a shared machine hits both alike; the median is reported. timm's
``volo_d1`` / ``swin_tiny`` are added when timm imports.

Peak memory on CPU is the peak of live tensor bytes during one step, from the allocation and free
events that ``torch.profiler`` records with ``profile_memory=True`` (on CUDA:
``torch.cuda.max_memory_allocated``). The outlook kernel section measures the attention op alone
(``outlook_attention`` forward + backward from given values and weights) and the whole
``OutlookAttention`` module (projections included).

``--compiled-train`` adds the compiled-training section: per family, a training step (forward, the
task's loss, backward, AdamW step) eager against the same step as ``vitlab train --compile`` runs it
(forward + loss under ``torch.compile``, fused AdamW), on the same weights, interleaved; with the
compile time (first call) and, for ``volo_d1``, timm's eager step on the same weights.
"""
from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path

import torch
import torch.nn.functional as F

import vitlab
from vitlab.attention.outlook import OutlookAttention, outlook_attention
from vitlab.bench.memory import peak_bytes
from vitlab.bench.reference import reference_paths
from vitlab.bench.throughput import time_interleaved, training_forward
from vitlab.engine.losses import classification_loss
from vitlab.engine.runtime import fuse_optimizer_step
from vitlab.models.base import TrainOutput, VitlabModel

DEFAULT_MODELS = ["volo_d1", "swin_tiny", "pale_tiny", "uniformer_small", "vit_base_patch16"]
COMPILED_TRAIN_MODELS = ["volo_d1", "volo_micro", "pale_micro", "swin_micro", "uniformer_micro",
                         "uniformer_video_micro", "vit_micro", "upernet_micro"]


def _loss(out, target):
    if isinstance(out, TrainOutput):  # vitlab's forward_train: class logits (+ aux token logits)
        loss = F.cross_entropy(out.logits, target)
        return loss if out.aux_logits is None else loss + 0.5 * out.aux_logits.float().mean()
    return F.cross_entropy(out, target)


class Runner:
    """One model variant: ``infer()`` and ``train_step()`` closures sharing the model and data."""

    def __init__(self, model, x, target, context, dtype):
        self.model, self.x, self.target, self.context, self.dtype = model, x, target, context, dtype
        # vitlab: forward_train (class + aux-head logits); timm: its plain forward, as before
        self.forward_train = training_forward(model) if isinstance(model, VitlabModel) else model
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def _autocast(self):
        return torch.autocast(self.x.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def infer(self):
        self.model.eval()
        with self.context(self.model), torch.no_grad(), self._autocast():
            return self.model(self.x)

    def train_step(self):
        self.model.train()
        with self.context(self.model), self._autocast():
            loss = _loss(self.forward_train(self.x), self.target)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _nullctx(model):
    import contextlib
    return contextlib.nullcontext(model)


def bench_model(name: str, args, device, dtype) -> list[dict]:
    torch.manual_seed(0)
    try:
        model = vitlab.create_model(name, num_classes=1000).to(device)
    except Exception as e:  # a family may not be available in this checkout
        print(f"  skip {name}: {e}")
        return []
    img = args.img
    x = torch.randn(args.batch, 3, img, img, device=device)
    target = torch.randint(0, 1000, (args.batch,), device=device)
    runners = {"vitlab": Runner(model, x, target, _nullctx, dtype),
               "reference": Runner(model, x, target, reference_paths, dtype)}
    timm_name = {"volo_d1": "volo_d1_224", "swin_tiny": "swin_tiny_patch4_window7_224"}.get(name)
    if timm_name and args.timm:
        try:
            tm = _import_timm().create_model(timm_name, pretrained=False).to(device)
            runners["timm"] = Runner(tm, x, target, _nullctx, dtype)
        except Exception as e:
            print(f"  timm unavailable ({type(e).__name__}: {str(e)[:80]})")
    # same function: the reference path must reproduce vitlab's logits
    with torch.no_grad():
        a, b = runners["vitlab"].infer(), runners["reference"].infer()
    agree = (a.float() - b.float()).abs().max().item()
    rows = []
    for mode in ("infer", "train"):
        fns = {k: (r.infer if mode == "infer" else r.train_step) for k, r in runners.items()}
        sec = time_interleaved(fns, device, warmup=args.warmup, iters=args.iters)
        mem = {k: peak_bytes(fn, device, above_baseline=True) for k, fn in fns.items()} if args.memory else {}
        for k in fns:
            rows.append(dict(model=name, mode=mode, path=k, ips=args.batch / sec[k],
                             mem_mib=mem.get(k, float("nan")) / 2 ** 20, agree=agree))
        ref, ours = sec["reference"], sec["vitlab"]
        print(f"  {name:18s} {mode:5s} vitlab {args.batch / ours:7.2f} img/s  reference {args.batch / ref:7.2f} img/s"
              f"  speed x{ref / ours:.2f}" + (f"  memory x{mem['vitlab'] / mem['reference']:.2f}" if mem else "")
              + (f"  vs timm x{sec['timm'] / ours:.2f}" if "timm" in sec else "") + f"  (max |diff| {agree:.1e})",
              flush=True)
    return rows


def bench_outlook_kernel(args, device) -> list[dict]:
    """Outlook attention at 56x56x192 (6 heads), forward + backward: op alone and whole module."""
    B, H, C, heads = args.kernel_batch, 56, 192, 6
    torch.manual_seed(0)
    v = torch.randn(B, H, H, C, device=device, requires_grad=True)
    attn = torch.randn(B, heads, (H // 2) ** 2, 9, 9, device=device).softmax(-1).requires_grad_()
    x = torch.randn(B, H, H, C, device=device, requires_grad=True)
    grad = torch.randn(B, H, H, C, device=device)
    module = OutlookAttention(C, heads, 3, 1, 2).to(device)
    impls = ("reference", "torch") + (("triton",) if device.type == "cuda" else ())

    def op(impl):
        return lambda: outlook_attention(v, attn, heads, 3, 1, 2, impl).backward(grad)

    def mod(impl):
        def run():
            module.implementation = impl
            module(x).backward(grad)
        return run

    rows = []
    for label, make in (("outlook op", op), ("OutlookAttention module", mod)):
        fns = {i: make(i) for i in impls}
        sec = time_interleaved(fns, device, warmup=1, iters=args.kernel_iters)
        mem = {i: peak_bytes(fn, device, above_baseline=True) for i, fn in fns.items()}
        for i in impls:
            rows.append(dict(model=f"{label} 56x56x192 b{B}", mode="fwd+bwd", path=i, ips=B / sec[i],
                             mem_mib=mem[i] / 2 ** 20, agree=0.0))
        print(f"  {label:24s} fwd+bwd: fold-free {sec['torch']:.3f}s vs unfold/fold {sec['reference']:.3f}s "
              f"(x{sec['reference'] / sec['torch']:.2f}); peak memory {mem['torch'] / 2 ** 20:.0f} vs "
              f"{mem['reference'] / 2 ** 20:.0f} MiB (x{mem['torch'] / mem['reference']:.2f})", flush=True)
    return rows


def _import_timm():
    """timm, with the stand-in torchvision beside the repository appended to the path (a real one wins)."""
    import sys
    stub = Path(__file__).resolve().parents[1].parent / "shared" / "torchvision_stub"
    if stub.is_dir() and str(stub) not in sys.path:
        sys.path.append(str(stub))
    import timm
    return timm


class AdamWStep:
    """One training step: ``loss_fn(*inputs)``, backward, AdamW; ``compiled``: as ``vitlab train --compile``
    runs it (``loss_fn`` under ``torch.compile``, the fused AdamW kernel)."""

    def __init__(self, model, loss_fn, inputs, compiled: bool):
        self.model, self.inputs = model.train(), inputs
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
        self.loss_fn = torch.compile(loss_fn) if compiled else loss_fn
        if compiled:
            fuse_optimizer_step(self.opt)

    def __call__(self):
        self.loss_fn(*self.inputs).backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


def _training_loss(model, name: str, batch: int, device):
    """``(loss_fn, inputs)`` of the model's task: segmentors ``model.loss``, classifiers ``classification_loss``."""
    size = model.pretrained_cfg["input_size"]
    if hasattr(model, "loss"):
        img = torch.randn(batch, *size, device=device)
        label = torch.randint(0, model.num_classes, (batch, *size[1:]), device=device)
        return (lambda img, label: model.loss(img, label)["loss"]), (img, label)
    x = torch.randn(batch, *size, device=device)
    target = torch.softmax(torch.randn(batch, model.num_classes, device=device), -1)
    return (lambda x, target: classification_loss(model.forward_train(x), target)), (x, target)


def bench_compiled_training(name: str, args, device) -> list[dict]:
    """Eager vs compiled training step of one model (same weights), interleaved; timm eager for volo_d1."""
    import copy
    import time

    torch.manual_seed(0)
    eager_model = vitlab.create_model(name).to(device)
    compiled_model = copy.deepcopy(eager_model)
    batch = args.batch if not name.endswith("_micro") else args.micro_batch
    steps = {}
    for label, model in (("eager", eager_model), ("compiled", compiled_model)):
        loss_fn, inputs = _training_loss(model, name, batch, device)
        steps[label] = AdamWStep(model, loss_fn, inputs, compiled=label == "compiled")
    t0 = time.perf_counter()
    steps["compiled"]()  # compiles forward + loss and, at the first backward, the backward graph
    compile_s = time.perf_counter() - t0
    if name == "volo_d1" and args.timm:
        try:
            timm = _import_timm()
            tm = timm.create_model("volo_d1_224", pretrained=False).to(device)
            tm.load_state_dict(eager_model.state_dict())
            x = steps["eager"].inputs[0]
            y = torch.randint(0, 1000, (x.shape[0],), device=device)
            steps["timm eager"] = AdamWStep(tm, lambda x, y: F.cross_entropy(tm(x), y), (x, y), compiled=False)
        except Exception as e:
            print(f"  timm unavailable ({type(e).__name__}: {str(e)[:80]})")
    sec = time_interleaved(steps, device, warmup=args.warmup, iters=args.iters)
    rows = [dict(model=name, batch=batch, path=k, ips=batch / sec[k], vs_eager=sec["eager"] / sec[k],
                 compile_s=compile_s if k == "compiled" else None) for k in steps]
    print(f"  {name:22s} train step b{batch}: eager {sec['eager']:.3f}s compiled {sec['compiled']:.3f}s "
          f"x{sec['eager'] / sec['compiled']:.2f}" + (f", timm eager {sec['timm eager']:.3f}s (compiled vs timm "
          f"x{sec['timm eager'] / sec['compiled']:.2f})" if "timm eager" in sec else "")
          + f", compile {compile_s:.0f}s", flush=True)
    return rows


def compiled_markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| model | batch | step | images/s | speed vs eager vitlab | compile s |",
             "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        compile_s = f"{r['compile_s']:.0f}" if r["compile_s"] is not None else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['path']} | {r['ips']:.2f} | x{r['vs_eager']:.2f} | "
                     f"{compile_s} |")
    return "\n".join(lines) + "\n"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "", "| model | mode | path | images/s | peak MiB | speed vs reference | memory vs reference |",
             "|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ref = next(q for q in rows if q["model"] == r["model"] and q["mode"] == r["mode"] and q["path"] == "reference")
        lines.append(f"| {r['model']} | {r['mode']} | {r['path']} | {r['ips']:.2f} | {r['mem_mib']:.0f} | "
                     f"x{r['ips'] / ref['ips']:.2f} | x{r['mem_mib'] / ref['mem_mib']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="*", default=DEFAULT_MODELS)
    p.add_argument("--batch", type=int, default=None, help="default 8 on CPU, 64 on GPU")
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default=None, help="default fp32 on CPU, bf16 on GPU")
    p.add_argument("--kernel-batch", type=int, default=32, help="batch of the outlook kernel benchmark (0: skip)")
    p.add_argument("--kernel-iters", type=int, default=2)
    p.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory runs")
    p.add_argument("--no-timm", dest="timm", action="store_false")
    p.add_argument("--compiled-train", nargs="*", default=None, metavar="MODEL",
                   help=f"compiled vs eager training step (no names: {' '.join(COMPILED_TRAIN_MODELS)})")
    p.add_argument("--micro-batch", type=int, default=8, help="batch of the *_micro models in --compiled-train")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch = args.batch or (64 if device.type == "cuda" else 8)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    machine = torch.cuda.get_device_name() if device.type == "cuda" else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    header = (f"{datetime.date.today().isoformat()} · {machine} · torch {torch.__version__} · batch {args.batch} at "
              f"{args.img}, {str(dtype).replace('torch.', '')}")
    print(header, flush=True)
    if args.compiled_train is not None:
        names = args.compiled_train or COMPILED_TRAIN_MODELS
        rows = [r for name in names for r in bench_compiled_training(name, args, device)]
        return _report(compiled_markdown(rows, header + " · training step = forward, loss, backward, AdamW"), args.out)
    rows = []
    if args.kernel_batch:
        rows += bench_outlook_kernel(args, device)
    for name in args.models:
        rows += bench_model(name, args, device, dtype)
    return _report(markdown(rows, header), args.out)


def _report(table: str, out: Path | None) -> int:
    """Print the table and write it to ``out`` (atomically) when given."""
    print(table)
    if out:
        from vitlab.checkpoints.atomic import atomic_write_text
        atomic_write_text(out, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""One prepared GPU run: correctness of every CUDA path, then throughput and peak memory side by side.

The one command, on a machine with one CUDA GPU (under 5 minutes on an H200):

    python benchmarks/gpu_suite.py --out gpu.md

It prints the environment (torch, CUDA, GPU, Triton) and ONE markdown table, also written to
``--out`` (atomically). Anything that fails (a compile error, an out-of-memory, a wrong result)
becomes a FAIL row with a one-line reason; the suite itself keeps going. Exit code 1 if any row failed.

Correctness (rows with a max error and a tolerance; PASS / FAIL / SKIP (reason)):

* outlook attention at VOLO-D1's stage-1 geometry (28x28 map, 192 channels, 6 heads, K=3, s=2):
  the fold-free PyTorch path against the published unfold/fold one (fp32); the one-time Triton
  self-check of ``vitlab.attention.outlook`` (did "auto" keep Triton or fall back?) in fp32 and
  bf16; the Triton kernels' forward and both gradients against the PyTorch path (tolerances of the
  self-check: 1e-4 (fp32) and 2e-2 (bf16) relative to the largest reference value);
* every family: vitlab's SDPA paths against ``vitlab.bench.reference.reference_paths`` (same model,
  same weights, fp32, TF32 off): outputs and input gradients; under bf16 autocast the vitlab path
  must be no less accurate than the reference path (its error against the fp32 reference at most
  twice the reference path's own bf16 error, or 1% of the output scale); the device's fp32 output
  against the same model on the CPU (CUDA only); one bf16-autocast training step (forward,
  cross-entropy (SegViT: its ATM loss), backward, AdamW) with a finite loss and finite gradients.

Throughput (rows with images/s and peak memory; OK / FAIL / SKIP): every model at a realistic batch,
bf16 autocast, channels-last, eager and ``torch.compile``, inference (eval, no grad) and a training
step (``forward_train`` / SegViT's ``loss``, cross-entropy, backward, AdamW), each next to its
reference path and timm's model where timm has one, all paths of a group timed interleaved in the
same run (median of ``--iters`` calls after ``--warmup`` untimed ones, ``torch.cuda.synchronize``
around every call). Peak MiB = ``torch.cuda.max_memory_allocated`` during one call after
``reset_peak_memory_stats``, minus what was allocated before it (weights, optimizer state and
inputs of every path in the comparison), via :func:`vitlab.bench.memory.peak_bytes`.

``--budget-s`` bounds the whole run: a group whose estimated time (measured warm-up calls; for
``torch.compile`` ``--compile-estimate-s`` per path) does not fit in what is left becomes SKIP
rows that say so. ``--smoke`` runs the same code on the test-sized ``*_micro`` variants, batch 2,
two iterations, on the CPU if there is no GPU (``torch.compile`` then uses the "eager" backend, so
no C++ toolchain is needed); CUDA-only checks are reported as SKIP, never PASS.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import math
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import vitlab
from vitlab.attention import outlook as outlook_mod
from vitlab.bench.memory import peak_bytes
from vitlab.bench.reference import reference_paths
from vitlab.bench.throughput import training_forward
from vitlab.engine.losses import classification_loss
from vitlab.segmentation.segmentor import Segmentor

ROOT = Path(__file__).resolve().parents[1]
TORCHVISION_STUB = ROOT.parent / "shared" / "torchvision_stub"  # timm imports torchvision; vitlab never does

CLASSIFIERS = ["volo_d1", "pale_tiny", "uniformer_small", "swin_tiny", "vit_base_patch16"]
TIMM_NAMES = {"volo_d1": "volo_d1_224", "swin_tiny": "swin_tiny_patch4_window7_224",
              "vit_base_patch16": "vit_base_patch16_224"}
OUTLOOK_GEOMETRY = dict(size=28, channels=192, heads=6, kernel=3, padding=1, stride=2)  # VOLO-D1 stage 1 at 224
TRITON_RTOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}  # the tolerances of outlook's own self-check


class Skip(Exception):
    """A check or measurement that cannot run here; the message is the reason."""


@dataclass
class Row:
    section: str
    check: str
    status: str
    error: str = ""
    tolerance: str = ""
    ips: str = ""
    mib: str = ""
    versus: str = ""


def one_line(exc: BaseException, limit: int = 160) -> str:
    """``Type: first line of the message``, shortened, safe inside a markdown cell."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = "CUDA out of memory" if isinstance(exc, torch.cuda.OutOfMemoryError) else type(exc).__name__
    text = f"{name}: {text}" if text else name
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return text.replace("|", "/")


def free_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def attempt(fn):
    """``(fn(), None)``, or ``(None, one-line reason)`` if it raised (not for :class:`Skip`). The reason is
    taken inside the handler and the cache emptied after it, once the traceback no longer holds the tensors."""
    try:
        return fn(), None
    except Skip:
        raise
    except Exception as e:  # noqa: BLE001 - every failure is a row, never a crash
        reason = one_line(e)
    free_memory()
    return None, reason


class Budget:
    """Seconds left of ``--budget-s``; ``fits(s)`` says whether ``s`` more seconds still fit."""

    def __init__(self, seconds: float):
        self.total, self.start = seconds, time.monotonic()

    def left(self) -> float:
        return self.total - (time.monotonic() - self.start)

    def fits(self, seconds: float) -> bool:
        return seconds <= self.left()

    def reason(self, seconds: float) -> str:
        return f"budget: needs ~{seconds:.0f} s, {max(self.left(), 0):.0f} s of --budget-s {self.total:.0f} left"


class Suite:
    """Collects the rows; runs every check so that an exception becomes a FAIL row."""

    def __init__(self, args, device: torch.device):
        self.args, self.device, self.rows = args, device, []
        self.budget = Budget(args.budget_s)

    def add(self, section, check, status, **cells):
        self.rows.append(Row(section, check, status, **cells))
        print(f"  {status.split(' ')[0]:4s} {check}" + (f"  {status[5:]}" if " " in status else ""), flush=True)

    def check(self, section: str, check: str, fn) -> None:
        """``fn()`` returns (error, tolerance) numbers (PASS when error <= tolerance) or (text, "", ok)."""
        if self.budget.left() <= 0:
            return self.add(section, check, f"SKIP ({self.budget.reason(1)})")
        try:
            result, reason = attempt(fn)
        except Skip as s:
            return self.add(section, check, f"SKIP ({s})")
        if reason:
            return self.add(section, check, f"FAIL ({reason})")
        if len(result) == 3:
            text, tol, ok = result
            return self.add(section, check, "PASS" if ok else f"FAIL ({text})", error=text, tolerance=tol)
        err, tol = result
        ok = err <= tol  # NaN fails
        self.add(section, check, "PASS" if ok else f"FAIL (error {err:.2e} > tolerance {tol:.2e})",
                 error=f"{err:.2e}", tolerance=f"{tol:.2e}")


# --------------------------------------------------------------------------------------------
# correctness
# --------------------------------------------------------------------------------------------
def compare(ref: torch.Tensor, got: torch.Tensor, rtol: float, atol: float = 0.0) -> tuple[float, float]:
    """(max |ref - got|, atol + rtol * max |ref|); NaN anywhere gives a NaN error."""
    ref, got = ref.detach().float().cpu(), got.detach().float().cpu()
    if ref.shape != got.shape:
        raise ValueError(f"shapes differ: {tuple(got.shape)} vs expected {tuple(ref.shape)}")
    diff = (ref - got).abs().max().item() if torch.isfinite(got).all() else float("nan")
    return diff, atol + rtol * ref.abs().max().item()


@contextlib.contextmanager
def full_fp32():
    """fp32 matmuls and convolutions without TF32 (so that fp32 comparisons mean fp32)."""
    old = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.set_float32_matmul_precision("highest")
        torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.set_float32_matmul_precision(old[0])
            torch.backends.cudnn.allow_tf32 = old[1]


def outlook_inputs(device, dtype, batch: int):
    g = OUTLOOK_GEOMETRY
    n = ((g["size"] + 2 * g["padding"] - g["kernel"]) // g["stride"] + 1) ** 2
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(batch, g["size"], g["size"], g["channels"], generator=gen)
    attn = torch.randn(batch, g["heads"], n, g["kernel"] ** 2, g["kernel"] ** 2, generator=gen).softmax(-1)
    grad = torch.randn(batch, g["size"], g["size"], g["channels"], generator=gen)
    return [t.to(device=device, dtype=dtype) for t in (v, attn, grad)]


def outlook_run(v, attn, grad, implementation: str):
    """(output, grad of v, grad of attn) of ``outlook_attention`` in float32."""
    g = OUTLOOK_GEOMETRY
    v, attn = v.detach().requires_grad_(), attn.detach().requires_grad_()
    out = outlook_mod.outlook_attention(v, attn, g["heads"], g["kernel"], g["padding"], g["stride"], implementation)
    gv, ga = torch.autograd.grad(out, (v, attn), grad.to(out.dtype))
    return [t.detach().float() for t in (out, gv, ga)]


def triton_state(device) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None: they can)."""
    if device.type != "cuda":
        return "needs a CUDA device"
    from vitlab.attention import outlook_triton
    return None if outlook_triton.is_available() else "triton is not installed"


def outlook_checks(suite: Suite) -> None:
    dev, batch = suite.device, suite.args.kernel_batch
    section = "outlook"
    fp32_cache: dict = {}

    def fold_free(i):
        def run():
            if "r" not in fp32_cache:
                with full_fp32():
                    inputs = outlook_inputs(dev, torch.float32, batch)
                    fp32_cache["r"] = outlook_run(*inputs, "reference"), outlook_run(*inputs, "torch")
            ref, got = fp32_cache["r"]
            return compare(ref[i], got[i], 1e-4, 1e-6)
        return run

    for i, what in enumerate(("output", "grad of v", "grad of attn")):
        suite.check(section, f"outlook {what}: fold-free torch vs unfold/fold reference (fp32, {dev.type})",
                    fold_free(i))

    def self_check(dtype):
        def run():
            why = triton_state(dev)
            if why:
                raise Skip(why)
            outlook_mod.reset_triton_check()
            v, attn, _ = outlook_inputs(dev, dtype, 1)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                outlook_mod.outlook_attention(v, attn, OUTLOOK_GEOMETRY["heads"], implementation="auto")
            fell_back = [str(w.message) for w in caught if "Triton" in str(w.message)]
            cache = getattr(outlook_mod, "_TRITON_CHECK", None)  # the module's record of its self-check
            if cache is not None:
                if (str(v.device), dtype) not in cache:
                    raise Skip("auto did not select Triton (no self-check ran)")
                ok, reason, _ = cache[(str(v.device), dtype)]
            else:  # no record to read: the fallback warning is the evidence
                ok, reason = not fell_back, (fell_back or [""])[0]
            return ("passed: auto uses Triton" if ok else f"fell back to torch: {reason}"[:200].replace("|", "/"),
                    "", ok)
        return run

    for dtype in (torch.float32, torch.bfloat16):
        suite.check(section, f"Triton outlook self-check, implementation='auto' ({str(dtype)[6:]})", self_check(dtype))

    for dtype in (torch.float32, torch.bfloat16):
        cache: dict = {}

        def kernel(i, dtype=dtype, cache=cache):
            def run():
                why = triton_state(dev)
                if why:
                    raise Skip(why)
                if "r" not in cache:
                    v, attn, grad = outlook_inputs(dev, dtype, batch)
                    with full_fp32():  # the torch path in fp32 on the same (dtype-rounded) inputs
                        ref = outlook_run(v.float(), attn.float(), grad.float(), "torch")
                    cache["r"] = ref, outlook_run(v, attn, grad, "triton")
                ref, got = cache["r"]
                return compare(ref[i], got[i], TRITON_RTOL[dtype])
            return run

        for i, what in enumerate(("forward", "backward: grad of v", "backward: grad of attn")):
            suite.check(section, f"Triton outlook {what} vs torch path ({str(dtype)[6:]})", kernel(i))


def differentiable_forward(model, x):
    """The eval-mode output as a differentiable tensor (a segmentor's scores without its no-grad wrapper)."""
    if isinstance(model, Segmentor):
        return model.forward_head(model.forward_features(x), out_size=x.shape[-2:])
    return model(x)


def output_and_grad(model, x, weight, reference: bool, autocast_dtype=None):
    x = x.detach().requires_grad_()
    ctx = reference_paths(model) if reference else contextlib.nullcontext()
    amp = torch.autocast(x.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with ctx, amp:
        out = differentiable_forward(model, x)
    (grad,) = torch.autograd.grad((out.float() * weight).sum(), x)
    return out.detach().float(), grad


def train_loss(model, x, target):
    """The training loss of one batch: ATM loss for segmentors, cross-entropy (+ aux tokens) otherwise."""
    if isinstance(model, Segmentor):
        return model.loss(x, target)["loss"]
    return classification_loss(training_forward(model)(x), F.one_hot(target, model.num_classes).float())


def make_target(model, x):
    if isinstance(model, Segmentor):
        return torch.randint(0, model.num_classes, (x.shape[0], *x.shape[-2:]), device=x.device)
    return torch.randint(0, model.num_classes, (x.shape[0],), device=x.device)


def bf16_train_step(model, x) -> tuple[str, str, bool]:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        loss = train_loss(model, x, make_target(model, x))
    loss.backward()
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    with_grad = sum(p.grad is not None for p in model.parameters())
    opt.step()
    bad_after = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    ok = math.isfinite(loss.item()) and with_grad > 0 and not bad and not bad_after
    text = f"loss {loss.item():.3g}, {with_grad} grads"
    if not ok:
        text += f"; non-finite grad in {bad[0]}" if bad else ""
        text += f"; non-finite {bad_after[0]} after the step" if bad_after else ""
    return text, "finite", ok


def image_size(model) -> int:
    return int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])


def family_checks(suite: Suite, name: str) -> None:
    dev, section = suite.device, "SDPA vs reference"
    state: dict = {}

    def paths():
        if "model" not in state:
            torch.manual_seed(0)
            model = vitlab.create_model(name).to(dev).eval()
            size = image_size(model)
            x = torch.randn(2, 3, size, size, device=dev)
            with full_fp32():
                weight = torch.randn_like(differentiable_forward(model, x).float())
                state.update(model=model, x=x, weight=weight,
                             ours=output_and_grad(model, x, weight, False), ref=output_and_grad(model, x, weight, True))
        return state

    def output():
        s = paths()
        return compare(s["ref"][0], s["ours"][0], 2e-4, 1e-6)

    def grad():
        s = paths()
        return compare(s["ref"][1], s["ours"][1], 1e-3, 1e-8)

    def bf16():
        s = paths()
        ours = output_and_grad(s["model"], s["x"], s["weight"], False, torch.bfloat16)[0]
        ref = output_and_grad(s["model"], s["x"], s["weight"], True, torch.bfloat16)[0]
        err, _ = compare(s["ref"][0], ours, 0.0)
        ref_err, scale = compare(s["ref"][0], ref, 1e-2)
        return err, max(2 * ref_err, scale)

    def vs_cpu():
        if dev.type != "cuda":
            raise Skip("needs a CUDA device")
        s = paths()
        cpu_model = copy.deepcopy(s["model"]).cpu()
        with torch.no_grad():
            cpu_out = differentiable_forward(cpu_model, s["x"].cpu())
        return compare(cpu_out, s["ours"][0], 1e-3, 1e-6)

    def train():
        s = paths()
        return bf16_train_step(s["model"], s["x"])

    suite.check(section, f"{name}: output, SDPA path vs reference (fp32, {dev.type})", output)
    suite.check(section, f"{name}: input gradient, SDPA path vs reference (fp32, {dev.type})", grad)
    suite.check(section, f"{name}: bf16 autocast error vs fp32 reference (<= 2x reference path's)", bf16)
    suite.check(section, f"{name}: fp32 output, CUDA vs CPU", vs_cpu)
    suite.check("training step", f"{name}: bf16 autocast train step (CE, backward, AdamW) finite", train)
    state.clear()
    free_memory()


# --------------------------------------------------------------------------------------------
# throughput and memory
# --------------------------------------------------------------------------------------------
def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def import_timm():
    if TORCHVISION_STUB.is_dir() and str(TORCHVISION_STUB) not in sys.path:
        sys.path.append(str(TORCHVISION_STUB))  # appended: a real torchvision, if any, still wins
    import timm
    return timm


def make_step(model, x, target, mode: str, reference: bool, compiled, optimizer):
    """A no-argument closure: one inference call or one training step of ``model`` on ``x``."""
    ctx = (lambda: reference_paths(model)) if reference else contextlib.nullcontext
    amp = (lambda: torch.autocast(x.device.type, dtype=torch.bfloat16))
    if mode == "infer":
        fn = compiled(model) if compiled else model

        def infer():
            model.eval()
            with ctx(), torch.inference_mode(), amp():
                return fn(x)
        return infer
    if isinstance(model, Segmentor):
        forward = compiled(model.loss) if compiled else model.loss
        loss_of = lambda: forward(x, target)["loss"]  # noqa: E731
    elif hasattr(model, "forward_train"):  # compiled here: training_forward would pick the default backend
        forward = compiled(model.forward_train) if compiled else training_forward(model)
        loss_of = lambda: classification_loss(forward(x), F.one_hot(target, model.num_classes).float())  # noqa: E731
    else:  # timm
        forward = compiled(model) if compiled else model
        loss_of = lambda: F.cross_entropy(forward(x), target)  # noqa: E731

    def train():
        model.train()
        with ctx(), amp():
            loss = loss_of()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return train


def measure_group(suite: Suite, label: str, steps: dict, batch: int, compile_paths: bool) -> None:
    """Warm up, time interleaved and measure peak memory of every path in ``steps``; one row per path."""
    args, dev, budget = suite.args, suite.device, suite.budget

    def timed(step):
        sync(dev)
        t0 = time.perf_counter()
        step()
        sync(dev)
        return time.perf_counter() - t0

    alive, per_call = {}, {}
    warmup = max(2 if compile_paths else 1, args.warmup)  # the last warm-up call runs compiled code
    for path, step in steps.items():
        need = args.compile_estimate_s if compile_paths else 0.0
        if budget.left() <= need:
            suite.add("throughput", f"{label} · {path}", f"SKIP ({budget.reason(need)})")
            continue
        seconds, reason = attempt(lambda: [timed(step) for _ in range(warmup)][-1])
        if reason:
            suite.add("throughput", f"{label} · {path}", f"FAIL ({reason})")
        else:
            per_call[path], alive[path] = seconds, step
    need = sum(per_call.values()) * (args.iters + 1)
    if alive and not budget.fits(need):
        for path in alive:
            suite.add("throughput", f"{label} · {path}", f"SKIP ({budget.reason(need)})")
        return
    times = {k: [] for k in alive}
    for _ in range(args.iters):
        for path in list(alive):
            seconds, reason = attempt(lambda: timed(alive[path]))
            if reason:
                del alive[path]
                suite.add("throughput", f"{label} · {path}", f"FAIL ({reason})")
            else:
                times[path].append(seconds)
    ips, mib = {}, {}
    for path, step in alive.items():
        ips[path] = batch / statistics.median(times[path])
        peak, reason = attempt(lambda: peak_bytes(step, dev, above_baseline=True))
        mib[path] = float("nan") if reason else peak / 2 ** 20
        if reason:
            print(f"  peak memory of {label} · {path} failed: {reason}")
    for path in alive:
        versus = ""
        if path == "reference":
            versus = "baseline"
        elif "reference" in ips and path == "vitlab":
            versus = f"speed x{ips[path] / ips['reference']:.2f} · memory x{mib[path] / mib['reference']:.2f}"
        elif path == "timm" and "vitlab" in ips:
            versus = f"vitlab/timm: speed x{ips['vitlab'] / ips[path]:.2f} · memory x{mib['vitlab'] / mib[path]:.2f}"
        suite.add("throughput", f"{label} · {path}", "OK", ips=f"{ips[path]:.1f}", mib=mib_text(mib[path]),
                  versus=versus)


def mib_text(mib: float) -> str:
    return f"{mib:.0f}" if mib >= 100 else f"{mib:.1f}"


def build_paths(suite: Suite, name: str):
    """(models by path, batch, input, target) for one model name: vitlab (also the reference path) and timm."""
    dev, args = suite.device, suite.args
    torch.manual_seed(0)
    model = vitlab.create_model(name).to(dev).to(memory_format=torch.channels_last)
    size = image_size(model)
    batch = args.seg_batch if isinstance(model, Segmentor) else args.batch
    x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
    models = {"vitlab": model}
    timm_name = TIMM_NAMES.get(args.full_name.get(name, name))
    if timm_name:
        if args.smoke:
            suite.add("throughput", f"{name} · timm", "SKIP (--smoke: timm has no test-sized counterpart)")
        else:
            timm_model, reason = attempt(lambda: import_timm().create_model(timm_name, pretrained=False).to(dev).to(
                memory_format=torch.channels_last))
            if reason:
                suite.add("throughput", f"{name} · timm ({timm_name})", f"FAIL ({reason})")
            else:
                models["timm"] = timm_model
    return models, batch, x, make_target(model, x)


def throughput(suite: Suite, name: str, compile_mode: bool, modes=("infer", "train")) -> None:
    args = suite.args
    built, reason = attempt(lambda: build_paths(suite, name))
    if reason:
        return suite.add("throughput", f"{name}: build", f"FAIL ({reason})")
    models, batch, x, target = built
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-6) for k, m in models.items()}
    compiled = (lambda fn: torch.compile(fn, backend=args.compile_backend)) if compile_mode else None
    execution = f"compile({args.compile_backend})" if compile_mode else "eager"
    for mode in modes:
        steps = {"vitlab": make_step(models["vitlab"], x, target, mode, False, compiled, optimizers["vitlab"]),
                 "reference": make_step(models["vitlab"], x, target, mode, True, compiled, optimizers["vitlab"])}
        if "timm" in models:
            steps["timm"] = make_step(models["timm"], x, target, mode, False, compiled, optimizers["timm"])
        label = f"{name} · {mode} · {execution} · b{batch}@{x.shape[-1]}"
        measure_group(suite, label, steps, batch, compile_mode)
    del models, optimizers
    if compile_mode:
        torch._dynamo.reset()
    free_memory()


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def environment(device: torch.device, args) -> list[str]:
    try:
        import triton
        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = "not installed"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        machine = f"GPU {props.name} ({props.total_memory / 2 ** 30:.0f} GiB)"
    else:
        machine = f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    now = datetime.datetime.now().isoformat(timespec="seconds")
    return [f"{now} · {machine} · python {platform.python_version()}",
            f"torch {torch.__version__} · CUDA {torch.version.cuda or 'none'} · cuDNN {cudnn or 'none'} · "
            f"triton {triton_version} · timm {'skipped (--smoke)' if args.smoke else 'if importable'}",
            f"models {', '.join(args.models)} · batch {args.batch} (segmentation {args.seg_batch}) · bf16 autocast, "
            f"channels-last · warmup {args.warmup}, iters {args.iters} · compile "
            f"{'off' if args.no_compile else args.compile_backend} · budget {args.budget_s:.0f} s"
            + (" · SMOKE (test-sized models)" if args.smoke else "")]


def markdown(env: list[str], rows: list[Row], elapsed: float) -> str:
    counts = {s: sum(r.status.startswith(s) for r in rows) for s in ("PASS", "OK", "FAIL", "SKIP")}
    lines = [*(f"{e}  " for e in env), "",
             "| section | check | max error | tolerance | images/s | peak MiB | vs reference | status |",
             "|---|---|---:|---:|---:|---:|---|---|"]
    lines += [f"| {r.section} | {r.check} | {r.error} | {r.tolerance} | {r.ips} | {r.mib} | {r.versus} | {r.status} |"
              for r in rows]
    lines += ["", f"{counts['PASS']} PASS · {counts['OK']} OK (measured) · {counts['FAIL']} FAIL · "
              f"{counts['SKIP']} SKIP · {elapsed:.0f} s. Peak MiB: memory allocated during one call above what "
              f"was resident before it."]
    return "\n".join(lines) + "\n"


def default_models() -> list[str]:
    segvit = vitlab.list_models("*segvit*")
    seg = "segvit_vit_base" if "segvit_vit_base" in segvit else next(n for n in segvit if "micro" not in n)
    return CLASSIFIERS + [seg]


def micro_variant(name: str) -> str:
    """The test-sized variant of ``name``'s family (``volo_d1`` -> ``volo_micro``), or ``name`` itself."""
    micro = f"{name.split('_')[0]}_micro"
    return micro if micro in vitlab.list_models(micro) else name


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=None, help="registered names (default: the six families)")
    p.add_argument("--batch", type=int, default=None, help="classifier batch (default 128 on GPU, 2 with --smoke)")
    p.add_argument("--seg-batch", type=int, default=None, help="segmentation batch (default 16 on GPU)")
    p.add_argument("--kernel-batch", type=int, default=None, help="outlook kernel check batch (default 8)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per path (default 3; 1 with --smoke)")
    p.add_argument("--iters", type=int, default=None, help="timed calls per path (default 10; 2 with --smoke)")
    p.add_argument("--budget-s", type=float, default=270.0, help="skip what would run past this many seconds")
    p.add_argument("--compile-estimate-s", type=float, default=None,
                   help="assumed seconds to compile one path (default 45; 2 with --smoke)")
    p.add_argument("--compile-backend", default=None,
                   help="torch.compile backend (default inductor; eager with --smoke)")
    p.add_argument("--no-compile", action="store_true", help="eager rows only")
    p.add_argument("--smoke", action="store_true", help="test-sized *_micro models, batch 2, 2 iterations")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", type=Path, default=None, help="also write the table here (atomically)")
    args = p.parse_args(argv)
    smoke = args.smoke
    requested = args.models or default_models()
    args.models = [micro_variant(n) for n in requested] if smoke else requested
    args.full_name = dict(zip(args.models, requested))
    args.batch = args.batch or (2 if smoke else 128)
    args.seg_batch = args.seg_batch or (2 if smoke else 16)
    args.kernel_batch = args.kernel_batch or (2 if smoke else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if smoke else 3)
    args.iters = args.iters or (2 if smoke else 10)
    args.compile_estimate_s = args.compile_estimate_s if args.compile_estimate_s is not None else (2 if smoke else 45)
    args.compile_backend = args.compile_backend or ("eager" if smoke else "inductor")
    for flag in ("batch", "seg_batch", "kernel_batch", "iters"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_suite: error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    for limit in ("recompile_limit", "cache_size_limit"):  # vitlab, reference, train/eval: several graphs per model
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    env = environment(device, args)
    print("\n".join(env), flush=True)
    suite = Suite(args, device)
    print("correctness:", flush=True)
    outlook_checks(suite)
    for name in args.models:
        family_checks(suite, name)
    print("throughput:", flush=True)
    for name in args.models:
        throughput(suite, name, compile_mode=False)
    if args.no_compile:
        suite.add("throughput", "torch.compile rows", "SKIP (--no-compile)")
    else:
        for mode in ("infer", "train"):  # every model's inference first: training graphs take longest to compile
            for name in args.models:
                throughput(suite, name, compile_mode=True, modes=(mode,))
    table = markdown(env, suite.rows, time.monotonic() - suite.budget.start)
    print(table)
    if args.out:
        from vitlab.checkpoints.atomic import atomic_write_text
        atomic_write_text(args.out, table)
    return 1 if any(r.status.startswith("FAIL") for r in suite.rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Throughput and peak-memory measurement for one model on one device.

Conventions (stated in every report):
* images/s = batch / median wall time of ``iters`` timed iterations after ``warmup`` untimed ones;
* a train step is the training forward (``forward_train`` where the model has one: aux heads and
  MixToken included) + backward of a mean-of-outputs loss + an SGD update (compute only, no data loading);
* peak memory is the process peak RSS during the timed region on CPU (Linux ``VmHWM`` after a reset),
  ``torch.cuda.max_memory_allocated`` on CUDA.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn


@dataclass
class BenchResult:
    model: str
    device: str
    batch: int
    input_shape: tuple
    dtype: str
    threads: int
    params_m: float
    gmacs: float | None = None
    infer_img_s: float | None = None
    infer_peak_mb: float | None = None
    train_img_s: float | None = None
    train_peak_mb: float | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _read_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakMemory:
    """Context manager measuring peak memory in MB (RSS high-water mark on CPU, allocator peak on CUDA)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mb: float | None = None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):  # resetting VmHWM needs Linux >= 4.0
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            kb = _read_status_kb("VmHWM")
            self.peak_mb = kb / 1024 if kb is not None else None
        return False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _scalar_loss(out) -> torch.Tensor:
    """Sum of the means of every tensor in ``out`` (a tensor, a TrainOutput or other tuple/list, a dict);
    other leaves (None, a MixToken box) add nothing."""
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    if isinstance(out, dict):
        out = list(out.values())
    return sum(_scalar_loss(o) for o in out if isinstance(o, (torch.Tensor, tuple, list, dict)))


def time_iterations(step, device: torch.device, warmup: int, iters: int) -> list[float]:
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


def autocast_factory(device: torch.device, amp_dtype: torch.dtype | None):
    """A no-argument callable returning the autocast context for ``amp_dtype`` (or a null context)."""
    return (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext


def inference_step(model: nn.Module, example: torch.Tensor, autocast):
    """One forward pass without autograd, as a closure."""
    def infer():
        with torch.inference_mode(), autocast():
            return model(example)
    return infer


def training_forward(model: nn.Module):
    """The forward a training loss reads: ``model.forward_train`` (a TrainOutput) when the model has one,
    else ``model`` itself. For a ``torch.compile``'d model its ``forward_train`` is compiled too (the
    compiled module only compiles ``forward``)."""
    inner = getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module) and callable(getattr(inner, "forward_train", None)):
        return torch.compile(inner.forward_train)
    train_fn = getattr(model, "forward_train", None)
    return train_fn if callable(train_fn) else model


def training_step(model: nn.Module, example: torch.Tensor, autocast):
    """Training forward (:func:`training_forward`), a scalar loss, backward and an SGD update (tiny LR), as a
    closure; puts ``model`` in train mode."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    forward = training_forward(model)

    def step():
        with autocast():
            loss = _scalar_loss(forward(example))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def time_interleaved(steps: dict, device: torch.device, warmup: int, iters: int) -> dict[str, float]:
    """Median seconds per call of each step, the calls interleaved round-robin so that a change in machine
    load hits every step alike (side-by-side comparisons)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {k: [] for k in steps}
    for _ in range(iters):
        for k, step in steps.items():
            _sync(device)
            t0 = time.perf_counter()
            step()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def benchmark_model(model: nn.Module, example: torch.Tensor, name: str = "", train: bool = False,
                    warmup: int = 2, iters: int = 5, amp_dtype: torch.dtype | None = None,
                    count_flops: bool = True) -> BenchResult:
    """Measure params, GMACs (per sample), inference and (optionally) train-step throughput."""
    device = example.device
    batch = example.shape[0]
    params = sum(p.numel() for p in model.parameters())
    result = BenchResult(model=name or type(model).__name__, device=str(device), batch=batch,
                         input_shape=tuple(example.shape[1:]), dtype=str(amp_dtype or example.dtype).replace("torch.", ""),
                         threads=torch.get_num_threads(), params_m=round(params / 1e6, 3))
    if count_flops:
        from .flops import count_macs
        macs, _ = count_macs(model, example[:1])
        result.gmacs = round(macs / 1e9, 3)
    autocast = autocast_factory(device, amp_dtype)
    model.eval()
    infer = inference_step(model, example, autocast)
    with PeakMemory(device) as mem:
        times = time_iterations(infer, device, warmup, iters)
    result.infer_img_s = round(batch / statistics.median(times), 2)
    result.infer_peak_mb = None if mem.peak_mb is None else round(mem.peak_mb, 1)

    if train:
        step = training_step(model, example, autocast)
        with PeakMemory(device) as mem:
            times = time_iterations(step, device, warmup, iters)
        result.train_img_s = round(batch / statistics.median(times), 2)
        result.train_peak_mb = None if mem.peak_mb is None else round(mem.peak_mb, 1)
        model.eval()
    if device.type == "cpu":
        result.notes.append("peak memory = process peak RSS (includes the Python runtime and weights)")
    result.notes.append("GMACs = multiply-adds per sample (torch FLOP counter / 2; element-wise ops not counted)")
    return result

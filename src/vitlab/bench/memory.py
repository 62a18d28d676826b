"""Peak memory of one call, the same definition on CPU and on CUDA where the allocators allow it.

* CUDA: ``torch.cuda.reset_peak_memory_stats`` before the call, ``torch.cuda.max_memory_allocated``
  after it (synchronised on both sides). ``above_baseline=True`` subtracts what was allocated before
  the call (weights, inputs, optimizer state), leaving the memory the call itself needs.
* CPU: the peak of live tensor bytes during the call, replayed from the allocation and free events
  that ``torch.profiler`` records with ``profile_memory=True``. Only allocations made during the call
  are seen, so on CPU the result is always "above baseline" (whatever was allocated before is not
  counted, whatever the flag says). Profiling slows the call down: never time a profiled call.

Both count tensor storage only (not the Python runtime, not allocator caches), unlike the process
RSS that :class:`vitlab.bench.throughput.PeakMemory` reads on CPU.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable

import torch


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence what the profiler's native library prints on file descriptor 2 (start/stop banners)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real descriptor 2 (an embedded interpreter): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak live tensor bytes allocated while ``fn()`` runs on CPU (profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile
    with _quiet_native_stderr():
        prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        prof.start()
    try:
        fn()
    finally:
        with _quiet_native_stderr():
            prof.stop()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()  # negative for a free
        peak = max(peak, live)
    return peak


def peak_bytes(fn: Callable[[], object], device: torch.device | str, above_baseline: bool = False) -> int:
    """Peak tensor memory in bytes while ``fn()`` runs on ``device`` (see the module docstring)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return peak - base if above_baseline else peak
    if device.type == "cpu":
        return cpu_peak_bytes(fn)
    raise ValueError(f"peak memory is measured on 'cpu' or 'cuda' devices, got {device}")

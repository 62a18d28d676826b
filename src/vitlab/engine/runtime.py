"""Where and how a run computes: device, threads, autocast, DDP wrapping, SyncBatchNorm, torch.compile.

A compiled run (``model.compile``) compiles the train module as a whole (forward and, through
AOTAutograd, its backward) and steps the optimizer with PyTorch's fused kernels
(:func:`fuse_optimizer_step`): with the eager model's elementwise work fused away, the per-parameter
optimizer loop becomes a visible share of a CPU step.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import torch
from torch import nn

from vitlab.errors import ConfigError

from .distributed import DistInfo

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str, dist: DistInfo) -> torch.device:
    """``auto`` picks CUDA when available; under torchrun each rank takes its local GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda was asked for but CUDA is not available (torch "
                              f"{torch.__version__} {'has no CUDA build' if torch.version.cuda is None else 'sees no GPU'})")
        return torch.device("cuda", dist.local_rank)
    if name != "cpu":
        raise ConfigError(f"run.device must be auto, cpu or cuda, got {name!r}")
    return torch.device("cpu")


def set_threads(threads: int | None) -> None:
    """``run.threads``; without it, never more intra-op threads than CPU cores."""
    if threads:
        torch.set_num_threads(int(threads))
    elif os.environ.get("OMP_NUM_THREADS") is None and torch.get_num_threads() > (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count() or 1)


def autocast(device: torch.device, dtype: str | None):
    """Autocast context for ``bf16``/``fp16``; a no-op for None."""
    if not dtype:
        return nullcontext()
    if dtype == "fp16" and device.type == "cpu":
        raise ConfigError("amp.dtype fp16 needs a GPU; use bf16 on the CPU")
    return torch.autocast(device.type, dtype=AMP_DTYPES[dtype])


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def prepare_module(module: nn.Module, *, device: torch.device, dist: DistInfo, sync_bn: bool,
                   compile_module: bool, find_unused_parameters: bool = False) -> nn.Module:
    """``module`` for training: SyncBatchNorm (GPUs, DDP), DistributedDataParallel, torch.compile."""
    if dist.enabled:
        if sync_bn and device.type == "cuda" and has_batch_norm(module):
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
        if any(p.requires_grad for p in module.parameters()):
            module = nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=find_unused_parameters)
    if compile_module:
        module = torch.compile(module)
    return module


def no_sync(module: nn.Module, sync: bool):
    """DDP's ``no_sync`` for the micro-batches of an accumulated step that are not the last one."""
    inner = getattr(module, "_orig_mod", module)
    return inner.no_sync() if not sync and hasattr(inner, "no_sync") else nullcontext()


FUSED_OPTIMIZERS = (torch.optim.AdamW, torch.optim.Adam, torch.optim.SGD)


def fuse_optimizer_step(optimizer: torch.optim.Optimizer) -> bool:
    """Switch AdamW / Adam / SGD to ``fused=True`` (one kernel per parameter, no Python loop); True if done.

    Same update as the default path up to float rounding (``torch.optim`` docs, "fused"). Skipped for
    other optimizers, differentiable groups, and parameters the fused kernels do not take (not
    floating point, or on a device without them). Existing ``step`` counters move to the parameter's
    device as float32, as the fused kernels expect (a resumed unfused state). Call after loading a state.
    """
    from torch.optim.optimizer import _get_fused_kernels_supported_devices

    if not isinstance(optimizer, FUSED_OPTIMIZERS):
        return False
    devices = set(_get_fused_kernels_supported_devices())
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if any(g.get("differentiable") for g in optimizer.param_groups) or not all(
            p.is_floating_point() and p.device.type in devices for p in params):
        return False
    for g in optimizer.param_groups:
        g["fused"], g["foreach"] = True, False
    for p in params:
        step = optimizer.state.get(p, {}).get("step")
        if torch.is_tensor(step):
            optimizer.state[p]["step"] = step.to(device=p.device, dtype=torch.float32)
    optimizer._step_supports_amp_scaling = True  # GradScaler passes its scale and inf flag to the kernel
    return True

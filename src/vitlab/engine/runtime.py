"""Where and how a run computes: device, threads, autocast, DDP wrapping, SyncBatchNorm, torch.compile."""
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

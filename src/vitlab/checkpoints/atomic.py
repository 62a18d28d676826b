"""Crash-safe file writing: write to a temporary file in the same folder, fsync, then rename.

A reader sees either the old file or the complete new one, never a torn write. When the write
fails (a full disk, a read-only folder, no permission) the temporary file is removed, the previous
file is left as it was, and :class:`~vitlab.errors.WriteError` says so in one line. The file gets the
mode a plain ``open()`` would give it (0666 less the umask), not the temporary file's 0600. JSON is written
without bare ``NaN``/``Infinity`` (they become ``null``), so every JSON reader accepts it.
"""
from __future__ import annotations

import errno
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from vitlab.errors import WriteError

_REASONS = {errno.ENOSPC: "no space left on device", errno.EROFS: "the folder is on a read-only file system",
            errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EDQUOT: "disk quota exceeded"}


def _process_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _process_umask()      # read once: setting the umask to read it is not thread-safe


def default_permissions(path: str | os.PathLike) -> None:
    """Give ``path`` the mode a plain ``open()`` would (0666 less the umask): temporary files start as 0600."""
    os.chmod(path, 0o666 & ~_UMASK)


def _write_error(path: Path, e: OSError) -> WriteError:
    reason = _REASONS.get(e.errno, e.strerror or str(e))
    return WriteError(f"cannot write {path}: {reason}; nothing was changed there (a previous version is kept)")


@contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as e:
        raise _write_error(path, e) from e
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        default_permissions(tmp)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        if e.errno in _REASONS:
            raise _write_error(path, e) from e
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda p: p.write_text(text))


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats replaced by None (JSON has no NaN), recursively."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_json(obj: Any, **kwargs) -> str:
    """Strict JSON text (NaN -> null)."""
    return json.dumps(json_safe(obj), allow_nan=False, **kwargs)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, to_json(obj, indent=2, sort_keys=False) + "\n")


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch
    atomic_write(path, lambda p: torch.save(obj, p))


def atomic_save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p), metadata=metadata))


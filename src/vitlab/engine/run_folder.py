"""The output folder a run owns: never reused by accident, never written by two runs at once.

:func:`claim_run_folder` refuses a folder that already holds files unless the run continues it
(``--resume``) or replaces it (``--overwrite``), and takes a lock file (``.lock``: the owner's pid and
host) that a second writer meets and refuses. A lock left by a process that no longer exists (a
killed run) is taken over. Under torchrun only rank 0 touches the folder; every rank gets the same
verdict, so a refusal stops all of them.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from vitlab.errors import RunFolderError

LOCK_NAME = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_lock(lock: Path) -> tuple[int | None, str]:
    try:
        pid, _, host = lock.read_text().strip().partition("@")
        return int(pid), host
    except (OSError, ValueError):
        return None, ""


def _check_lock(folder: Path) -> bool:
    """Refuse a folder another live run holds; True when a stale lock (a killed run's) was removed."""
    lock = folder / LOCK_NAME
    if not lock.exists():
        return False
    pid, host = _read_lock(lock)
    if pid is not None and host == socket.gethostname() and not _pid_alive(pid):
        lock.unlink(missing_ok=True)                # left by a run that was killed: take it over
        return True
    owner = f"process {pid} on {host or 'an unknown host'}" if pid is not None else "another process"
    raise RunFolderError(f"{folder} is in use by {owner} (lock file {lock}); wait for that run to end, or "
                         f"delete the lock file if no run is using the folder")


def _take_lock(folder: Path) -> Path:
    lock = folder / LOCK_NAME
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _check_lock(folder):
                continue
        except OSError as e:
            raise RunFolderError(f"cannot write into {folder}: {e.strerror or e}") from e
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}@{socket.gethostname()}\n")
        return lock
    raise RunFolderError(f"could not take the lock file {lock}")


def _holds_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name != LOCK_NAME) if folder.is_dir() else []


class RunFolder:
    """A claimed output folder; ``release()`` (or leaving the ``with`` block) removes the lock."""

    def __init__(self, path: Path, lock: Path | None):
        self.path, self.lock = path, lock

    def release(self) -> None:
        if self.lock is not None:
            pid, _ = _read_lock(self.lock)
            if pid == os.getpid():
                self.lock.unlink(missing_ok=True)
            self.lock = None

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _claim(path: Path, resume: bool, overwrite: bool, resumable: bool = True) -> RunFolder:
    if path.exists() and not path.is_dir():
        raise RunFolderError(f"--output {path} is a file, not a folder")
    if path.is_dir():
        _check_lock(path)
    held = _holds_files(path)
    if resume and not held:
        raise RunFolderError(f"--resume {path}: the folder holds no run to continue")
    if held and not (resume or overwrite):
        shown = ", ".join(held[:5]) + (", ..." if len(held) > 5 else "")
        options = f"pass --resume {path} to continue that run, --overwrite to replace it" if resumable \
            else "pass --overwrite to replace them"
        raise RunFolderError(f"{path} already holds files ({shown}): {options}, or choose another --output")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunFolderError(f"cannot create the run folder {path}: {e.strerror or e}") from e
    lock = _take_lock(path)
    if held and overwrite and not resume:
        for name in held:
            target = path / name
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    return RunFolder(path, lock)


def claim_run_folder(path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
                     is_main: bool = True, distributed: bool = False, resumable: bool = True) -> RunFolder:
    """Claim ``path`` for a run (see the module docstring); every torchrun rank calls it. ``resumable=False``
    for outputs that cannot be continued (evaluation reports): the refusal then offers only --overwrite."""
    path = Path(path)
    folder, error = RunFolder(path, None), None
    if is_main:
        try:
            folder = _claim(path, resume, overwrite, resumable)
        except RunFolderError as e:
            error = str(e)
    if distributed:
        import torch.distributed as dist
        verdict = [error]
        dist.broadcast_object_list(verdict, src=0)
        error = verdict[0]
    if error is not None:
        raise RunFolderError(error)
    return folder

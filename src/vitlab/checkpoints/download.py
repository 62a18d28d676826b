"""Official weights in a verified local cache: resumable downloads, SHA-256 checked, files moved into place atomically.

The cache is one folder, :func:`cache_dir`: ``$VITLAB_HOME`` when set, else ``$XDG_CACHE_HOME/vitlab/weights``
(``~/.cache/vitlab/weights``). A zoo entry's file is ``<cache>/<entry.filename>``. While it downloads it is
``<file>.part``; an interrupted download resumes with an HTTP ``Range`` request (a server that answers 200
instead of 206 makes it start again from the beginning). The SHA-256 is computed while the bytes stream in.
When the zoo knows the hash, a mismatch removes the download and changes nothing in the cache; when it does
not (no official README publishes hashes), the first download's hash is recorded in ``<cache>/hashes.json``
and every later use of the file is checked against it. Only the standard library (urllib) is used.
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import sys
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

from vitlab.checkpoints.atomic import atomic_path, atomic_write_json
from vitlab.checkpoints import zoo
from vitlab.checkpoints.zoo import ZooEntry
from vitlab.errors import VitlabError

CHUNK = 1 << 20
HASHES = "hashes.json"
KEPT = "the partial file is kept for resuming"


class DownloadError(VitlabError):
    """The server could not be reached or the transfer broke off; a partial file is kept for resuming."""


class ChecksumError(VitlabError):
    """A file's SHA-256 is not the expected one; the cache keeps what it had."""


class WeightsNotCached(VitlabError):
    """The weights are not in the cache; the message names the command that puts them there."""


def cache_dir() -> Path:
    """``$VITLAB_HOME``, else ``$XDG_CACHE_HOME/vitlab/weights``, else ``~/.cache/vitlab/weights``."""
    home = os.environ.get("VITLAB_HOME")
    if home:
        return Path(home).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vitlab" / "weights"


def weights_path(entry: ZooEntry | str) -> Path:
    """Where the cache keeps an entry's file (whether or not it is there)."""
    return cache_dir() / _entry(entry).filename


def sha256_file(path: str | os.PathLike) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            hasher.update(chunk)
    return hasher.hexdigest()


# --- the transfer ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive advisory lock on ``path`` (POSIX ``flock``; none elsewhere): two processes - say the ranks
    of one torchrun job - never write the same file at once; the second waits and then finds it done."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _lock_of(path: Path) -> Path:
    """The (hidden, empty) lock file of ``path``; left in place, as removing it would race with a waiting process."""
    return path.with_name(f".{path.name}.lock")


def _shown(url: str) -> str:
    """The URL without its query: messages never repeat an access signature."""
    return url.split("?", 1)[0]


def _reason(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    if isinstance(e, HTTPError):
        return f"HTTP {e.code} {e.reason}"
    text = str(reason if reason is not None else e).strip()
    return text or type(e).__name__


def _kept(part: Path) -> str:
    return f"; {KEPT}" if part.is_file() and part.stat().st_size else ""


def _open(url: str, start: int, timeout: float):
    from vitlab import __version__
    headers = {"User-Agent": f"vitlab/{__version__}", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urlopen(Request(url, headers=headers), timeout=timeout)


def _range_start(response) -> int | None:
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


class _Progress:
    """A tqdm bar on a terminal; one plain line on stderr otherwise; nothing when disabled."""

    def __init__(self, enabled: bool, label: str, total: int | None, start: int):
        self.bar = None
        if not enabled:
            return
        if sys.stderr.isatty():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                            file=sys.stderr, leave=False)
        else:
            size = f" ({total / 2**20:.1f} MiB)" if total else ""
            note = f", resuming at {start / 2**20:.1f} MiB" if start else ""
            print(f"downloading {label}{size}{note}", file=sys.stderr, flush=True)

    def update(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _looks_like_html(path: Path) -> bool:
    """A web page where a checkpoint was expected (a login page, Google Drive's download warning)."""
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<?xml"))


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, progress: bool = True, *,
             timeout: float = 60.0) -> str:
    """Download ``url`` to ``dest`` and return its SHA-256 (hex).

    The bytes go to ``dest.part`` first, resumed with a Range request when one is there. With ``sha256`` the
    result must match: otherwise the partial file is removed, :class:`ChecksumError` names both hashes and
    ``dest`` is untouched. A network failure raises :class:`DownloadError` and keeps the partial file. On
    success the file is moved onto ``dest`` atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(_lock_of(dest)):
        return _download_locked(url, dest, sha256, progress, timeout)


def _download_locked(url: str, dest: Path, sha256: str | None, progress: bool, timeout: float) -> str:
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    shown = _shown(url)
    try:
        try:
            response = _open(url, start, timeout)
        except HTTPError as e:
            if e.code != 416 or not start:
                raise
            part.unlink()  # 416: the partial file is not a prefix the server can continue; start again
            start, response = 0, _open(url, 0, timeout)
        if start and response.status == 206 and _range_start(response) != start:
            response.close()  # a range other than the one asked for: start again
            start, response = 0, _open(url, 0, timeout)
    except (URLError, OSError, http.client.HTTPException) as e:
        raise DownloadError(f"cannot download {shown}: {_reason(e)}{_kept(part)}") from e

    hasher = hashlib.sha256()
    with response:
        resumed = bool(start) and response.status == 206
        if resumed:
            with open(part, "rb") as f:
                for chunk in iter(lambda: f.read(CHUNK), b""):
                    hasher.update(chunk)
        else:
            start = 0  # 200: the server sends the whole file; the partial one is overwritten
        length = response.headers.get("Content-Length", "")
        expected_bytes = int(length) if length.isdigit() else None
        bar = _Progress(progress, dest.name, None if expected_bytes is None else start + expected_bytes, start)
        received = 0
        try:
            with open(part, "ab" if resumed else "wb") as f:
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    f.write(chunk)
                    hasher.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f"cannot download {shown}: {_reason(e)}{_kept(part)}") from e
        finally:
            bar.close()
    if expected_bytes is not None and received < expected_bytes:
        raise DownloadError(f"cannot download {shown}: the connection closed after {start + received} of "
                            f"{start + expected_bytes} bytes{_kept(part)}")

    digest = hasher.hexdigest()
    if sha256 and digest != sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(f"the download of {shown} does not match its sha256: expected {sha256.lower()}, "
                            f"got {digest}; it was removed and nothing in the cache changed")
    if not sha256 and _looks_like_html(part):
        part.unlink()
        raise DownloadError(f"cannot download {shown}: the server sent a web page, not a checkpoint "
                            f"(open the link in a browser)")
    os.replace(part, dest)
    return digest


# --- the cache of zoo entries ------------------------------------------------------------------------

def _entry(name: ZooEntry | str) -> ZooEntry:
    return name if isinstance(name, ZooEntry) else zoo.zoo_entry(name)


def recorded_hashes() -> dict[str, dict]:
    """``hashes.json``: entry name -> {"sha256", "size", "url"} of the first download (or ``add``)."""
    path = cache_dir() / HASHES
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError) as e:
        raise VitlabError(f"{path} is not valid JSON ({e}); it records the hashes of downloaded weights: "
                          f"restore it, or delete it and run `vitlab weights verify` to record them again")
    hashes = data.get("hashes", {}) if isinstance(data, dict) else {}
    return hashes if isinstance(hashes, dict) else {}


def _record(entry: ZooEntry, digest: str, size: int) -> None:
    path = cache_dir() / HASHES
    with _locked(_lock_of(path)):
        hashes = recorded_hashes()
        hashes[entry.name] = {"sha256": digest, "size": size, "url": entry.url}
        atomic_write_json(path, {"version": 1, "hashes": dict(sorted(hashes.items()))})


def expected_sha256(entry: ZooEntry | str) -> tuple[str | None, str]:
    """(hash, where it comes from): the zoo's, else the one recorded at the first download, else (None, "")."""
    entry = _entry(entry)
    if entry.sha256:
        return entry.sha256.lower(), "the model zoo"
    record = recorded_hashes().get(entry.name) or {}
    if record.get("sha256"):
        return str(record["sha256"]).lower(), f"{cache_dir() / HASHES} (recorded at the first download)"
    return None, ""


def _how_to_fetch(entry: ZooEntry) -> str:
    if entry.direct:
        return f"run `vitlab weights download {entry.name}` (it downloads {entry.url})"
    return (f"{entry.host} does not allow scripted downloads: open {entry.url} in a browser, save the file, "
            f"then run `vitlab weights add {entry.name} FILE`")


def verify(entry: ZooEntry | str, path: str | os.PathLike | None = None) -> str:
    """Hash the cached file and compare it with the expected hash; with none known yet, record it. Returns the
    hash; a mismatch raises :class:`ChecksumError` saying how to replace the file."""
    entry = _entry(entry)
    path = Path(path) if path is not None else weights_path(entry)
    digest = sha256_file(path)
    expected, origin = expected_sha256(entry)
    if expected is None:
        _record(entry, digest, path.stat().st_size)
    elif digest != expected:
        raise ChecksumError(f"{path} does not match the sha256 of {entry.name}: expected {expected} (from {origin}), "
                            f"got {digest}; the file is damaged or was replaced: delete it, then "
                            + _how_to_fetch(entry))
    return digest


def download_weights(name: ZooEntry | str, progress: bool = True, force: bool = False) -> Path:
    """Put an entry's file in the cache (verified) and return its path; a file already there is checked, not
    fetched again, unless ``force``. Entries on sites without direct downloads raise with the manual steps."""
    entry = _entry(name)
    if not entry.direct:
        raise DownloadError(f"cannot download {entry.name} automatically: {_how_to_fetch(entry)}")
    path = weights_path(entry)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(_lock_of(path)):
        if path.is_file() and not force:
            verify(entry, path)
            return path
        expected, _ = expected_sha256(entry)
        digest = _download_locked(entry.download_url, path, expected, progress, 60.0)
    if expected is None:
        _record(entry, digest, path.stat().st_size)
    return path


def add_weights(name: ZooEntry | str, file: str | os.PathLike) -> Path:
    """Copy a file fetched by hand into the cache as ``name``'s weights (hash checked, or recorded when unknown)."""
    entry = _entry(name)
    src = Path(file)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such file")
    if _looks_like_html(src):
        raise VitlabError(f"{src} is a web page, not a checkpoint (a download-warning page?): open {entry.url} in a "
                          f"browser and confirm the download")
    expected, origin = expected_sha256(entry)
    dest = weights_path(entry)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _locked(_lock_of(dest)):
        with atomic_path(dest) as tmp:
            hasher = hashlib.sha256()
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                for chunk in iter(lambda: fin.read(CHUNK), b""):
                    fout.write(chunk)
                    hasher.update(chunk)
            digest = hasher.hexdigest()
            if expected and digest != expected:
                raise ChecksumError(f"{src} is not {entry.name}: its sha256 is {digest}, expected {expected} "
                                    f"(from {origin}); nothing in the cache changed")
    if expected is None:
        _record(entry, digest, dest.stat().st_size)
    return dest


def cached_weights(name: ZooEntry | str, download: bool = False, progress: bool = True) -> Path:
    """The verified path of ``name``'s weights in the cache. Not there: downloaded when ``download`` (and the
    site allows it), else :class:`WeightsNotCached` names the command to run and the URL."""
    entry = _entry(name)
    path = weights_path(entry)
    if path.is_file():
        verify(entry, path)
        return path
    if download and entry.direct:
        return download_weights(entry, progress=progress)
    raise WeightsNotCached(f"the weights {entry.name} are not in the cache ({path}): {_how_to_fetch(entry)}")


def cache_state(entry: ZooEntry | str) -> str:
    """``cached``, ``partial`` (an interrupted download) or ``-``."""
    path = weights_path(entry)
    if path.is_file():
        return "cached"
    return "partial" if path.with_name(path.name + ".part").is_file() else "-"


def cached_entries() -> list[ZooEntry]:
    """The zoo entries whose file is in the cache, in table order."""
    return [e for e in zoo.ZOO if weights_path(e).is_file()]

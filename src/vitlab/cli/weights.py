"""``vitlab weights``: the official checkpoints by name (:mod:`vitlab.checkpoints.zoo`) and the local cache.

``list`` shows the zoo with each entry's cache state, ``download NAME...`` fetches (resumable, SHA-256
checked), ``path NAME`` prints a cached file's verified path, ``add NAME FILE`` puts a file fetched by hand
(Google Drive links) into the cache, ``verify`` re-hashes every cached file. The cache is ``$VITLAB_HOME``
or ``~/.cache/vitlab/weights``. Nothing here imports torch.
"""
from __future__ import annotations

import fnmatch
import sys

from vitlab.checkpoints.atomic import to_json
from vitlab.cli.common import add_flags
from vitlab.errors import VitlabError

COMMAND = "weights"
HELP = "official checkpoints by name: list, download (resumable, SHA-256 checked), path, add, verify"

NAME_HELP = "a zoo name such as volo_d1.in1k (vitlab weights list), or a model name for its first checkpoint"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="the model zoo: name, model, input, result, host, cache state")
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on the name, e.g. 'volo*'")
    p.add_argument("--cached", action="store_true", help="only entries whose file is in the cache")
    add_flags(p, "json")
    p = sub.add_parser("download", help="download into the cache (resumes an interrupted download)")
    p.add_argument("names", nargs="+", metavar="NAME", help=NAME_HELP + "; fnmatch patterns too")
    p.add_argument("--force", action="store_true", help="download again even when the file is cached")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.add_parser("path", help="print the verified path of cached weights")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p = sub.add_parser("add", help="put a file you downloaded yourself into the cache as NAME's weights")
    p.add_argument("name", metavar="NAME", help=NAME_HELP)
    p.add_argument("file", metavar="FILE", help="the downloaded checkpoint (it is copied)")
    p = sub.add_parser("verify", help="re-hash every cached file against its known or recorded SHA-256")
    add_flags(p, "json")


def zoo_rows(pattern: str = "*") -> list[dict]:
    """One JSON-ready row per zoo entry matching ``pattern`` (``vitlab models --zoo``)."""
    from vitlab.checkpoints.zoo import ZOO
    return [e.row() for e in ZOO if fnmatch.fnmatchcase(e.name, pattern)]


def print_table(rows: list[dict], columns: list[tuple[str, str]]) -> None:
    """Rows as aligned text columns; ``columns`` are (key, heading) pairs."""
    cells = [[heading for _, heading in columns]] + [[_cell(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip())


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in value.items())
    return str(value)


ZOO_COLUMNS = [("name", "name"), ("model", "model"), ("input", "input"), ("crop_pct", "crop"),
               ("results", "result"), ("host", "source")]


def _expand(names: list[str]) -> list[str]:
    from vitlab.checkpoints.zoo import zoo_entry, zoo_names
    out: list[str] = []
    for name in names:
        if any(c in name for c in "*?["):
            matched = zoo_names(pattern=name)
            if not matched:
                raise VitlabError(f"no zoo entry matches {name!r}; `vitlab weights list` lists them")
            out += matched
        else:
            out.append(zoo_entry(name).name)
    return list(dict.fromkeys(out))


def _list(args) -> int:
    from vitlab.checkpoints.download import cache_dir, cache_state
    from vitlab.checkpoints.zoo import ZOO
    rows = []
    for entry in ZOO:
        if not fnmatch.fnmatchcase(entry.name, args.pattern):
            continue
        state = cache_state(entry)
        if args.cached and state != "cached":
            continue
        rows.append({**entry.row(), "cache": state, "fetch": "direct" if entry.direct else "by hand"})
    if args.json:
        print(to_json({"cache_dir": str(cache_dir()), "entries": rows}, indent=2))
        return 0
    if not rows:
        print(f"no zoo entry matches {args.pattern!r}" + (" in the cache" if args.cached else ""))
        return 1
    print_table(rows, [*ZOO_COLUMNS, ("fetch", "fetch"), ("cache", "cache")])
    print(f"cache: {cache_dir()}")
    return 0


def _download(args) -> int:
    from vitlab.checkpoints.download import download_weights, expected_sha256
    from vitlab.checkpoints.zoo import zoo_entry
    for name in _expand(args.names):
        path = download_weights(zoo_entry(name), progress=not args.quiet, force=args.force)
        print(f"{name}  {path}  sha256 {expected_sha256(name)[0]}")
    return 0


def _path(args) -> int:
    from vitlab.checkpoints.download import cached_weights
    print(cached_weights(args.name))
    return 0


def _add(args) -> int:
    from vitlab.checkpoints.download import add_weights, expected_sha256
    from vitlab.checkpoints.zoo import zoo_entry
    entry = zoo_entry(args.name)
    path = add_weights(entry, args.file)
    print(f"{entry.name}  {path}  sha256 {expected_sha256(entry)[0]}")
    return 0


def _verify(args) -> int:
    from vitlab.checkpoints.download import ChecksumError, cache_dir, cached_entries, expected_sha256, verify
    rows, bad = [], []
    for entry in cached_entries():
        known, _ = expected_sha256(entry)
        against = "-" if known is None else ("zoo" if entry.sha256 else "first download")
        try:
            digest = verify(entry)
            rows.append({"name": entry.name, "state": "ok" if known else "recorded now", "against": against,
                         "sha256": digest})
        except ChecksumError as e:
            rows.append({"name": entry.name, "state": "MISMATCH", "against": against, "sha256": None,
                         "error": str(e)})
            bad.append(entry.name)
    if args.json:
        print(to_json({"cache_dir": str(cache_dir()), "files": rows}, indent=2))
    elif rows:
        print_table(rows, [("name", "name"), ("state", "state"), ("against", "checked against"), ("sha256", "sha256")])
    else:
        print(f"no zoo weights in the cache ({cache_dir()})")
    if bad:
        for row in rows:
            if row.get("error"):
                print(row["error"], file=sys.stderr)
        raise ChecksumError(f"{len(bad)} of {len(rows)} cached files failed verification: {', '.join(bad)}")
    return 0


ACTIONS = {"list": _list, "download": _download, "path": _path, "add": _add, "verify": _verify}


def run(args) -> int:
    return ACTIONS[args.action](args)

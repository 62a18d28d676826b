"""``vitlab models``: list registered model names with their parameter counts.

Names, descriptions and parameter counts come from the static index ``vitlab/models/model_index.json``
(:mod:`vitlab.models.index`), so listing needs neither torch nor a model build. ``--zoo`` lists the official
checkpoints instead (:mod:`vitlab.checkpoints.zoo`; ``vitlab weights`` downloads them).
"""
from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from vitlab.checkpoints.atomic import to_json
from vitlab.cli.common import add_flags

COMMAND = "models"
HELP = "list model names (fnmatch pattern) with parameter counts"

# read directly: importing vitlab.models (the registry) would import torch
INDEX = Path(__file__).resolve().parent.parent / "models" / "model_index.json"


def add_arguments(p):
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'volo*'")
    p.add_argument("--families", action="store_true", help="also list family names (official kwargs)")
    p.add_argument("--zoo", action="store_true", help="list the official checkpoints instead (the pattern matches "
                   "their names): model, input, crop, result, source; `vitlab weights` downloads them")
    add_flags(p, "json")


def index_rows() -> list[dict]:
    """Every registered name (variants and families), sorted by name, from the shipped index."""
    try:
        with open(INDEX, encoding="utf-8") as f:
            return json.load(f)["models"]
    except FileNotFoundError:  # an install without the data file: compute it (imports torch, builds models)
        from vitlab.models.index import build_index
        return build_index()


def list_rows(pattern: str = "*", families: bool = False) -> list[dict]:
    """The rows ``vitlab models`` prints: name, family, params_m (None for a family), kind, description."""
    return [{"name": r["name"], "family": r["family"],
             "params_m": None if r["params"] is None else round(r["params"] / 1e6, 2),
             "kind": r["kind"], "description": r["description"]}
            for r in index_rows()
            if (families or r["kind"] != "family") and fnmatch.fnmatchcase(r["name"], pattern)]


def run(args) -> int:
    if args.zoo:
        return run_zoo(args)
    rows = list_rows(args.pattern, args.families)
    if args.json:
        print(to_json(rows, indent=2))
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}")
        return 1
    width = max(len(r["name"]) for r in rows)
    print(f"{'name':<{width}}  {'params':>9}  description")
    for r in rows:
        params = "family" if r["kind"] == "family" else f"{r['params_m']:.2f}M"
        print(f"{r['name']:<{width}}  {params:>9}  {r['description']}")
    return 0


def run_zoo(args) -> int:
    """``vitlab models --zoo``: the model-zoo table (:mod:`vitlab.checkpoints.zoo`)."""
    from vitlab.cli.weights import ZOO_COLUMNS, print_table, zoo_rows
    rows = zoo_rows(args.pattern)
    if args.json:
        print(to_json(rows, indent=2))
        return 0
    if not rows:
        print(f"no checkpoint matches {args.pattern!r}")
        return 1
    print_table(rows, ZOO_COLUMNS)
    return 0

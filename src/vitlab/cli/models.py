"""``vitlab models``: list registered model names with their parameter counts."""
from __future__ import annotations

import json

COMMAND = "models"
HELP = "list model names (fnmatch pattern) with parameter counts"


def add_arguments(p):
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'volo*'")
    p.add_argument("--families", action="store_true", help="also list family names (official kwargs)")
    p.add_argument("--json", action="store_true", help="print JSON")


def count_params(name: str) -> int | None:
    """Parameter count of a variant, built without weights where possible."""
    from vitlab.models.registry import build_without_weights
    try:
        model = build_without_weights(name)
    except TypeError:  # a family name needs its constructor arguments
        return None
    return sum(p.numel() for p in model.parameters())


def run(args) -> int:
    from vitlab.models.registry import get_entry, list_models
    rows = []
    for name in list_models(args.pattern, include_families=args.families):
        entry = get_entry(name)
        params = None if entry.is_family else count_params(name)
        rows.append({"name": name, "family": entry.family, "params_m": None if params is None else round(params / 1e6, 2),
                     "kind": "family" if entry.is_family else "variant", "description": entry.doc})
    if args.json:
        print(json.dumps(rows, indent=2))
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

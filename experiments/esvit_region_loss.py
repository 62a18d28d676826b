"""Does EsViT's region loss L_R help region-level features? L_V vs L_V + L_R at equal budget and seed.

    python experiments/esvit_region_loss.py --train --out runs/scenes       # 4 pretraining runs, then the table
    python experiments/esvit_region_loss.py --out runs/scenes               # the table of finished runs
    python experiments/esvit_region_loss.py --figure budget.png --budgets runs/scenes runs/scenes90 runs/scenes180
    python experiments/esvit_region_loss.py --gains runs/scenes runs/scenes_lr4 runs/scenes180 --seeds 0 1 2

Pretraining: ``vitlab pretrain --preset texture_scenes --loss {view,view+region} --seed {0,1}`` (swin_micro,
5x5 final tokens on the 80 px global crops of the built-in texture scenes; labels are never seen). Each
finished run is scored with the three frozen-feature evaluators, every one a ``vitlab`` command:

* ``vitlab knn``: image-level k-NN top-1 (label = the scene's dominant texture);
* ``vitlab dense-probe``: per-token linear probe, mIoU on the held-out scenes' exact masks;
* ``vitlab correspondence``: best-cosine token match between two augmented views against the true one
  known from the crops (exact, within one token, distance error in pixels of the original scene, and how
  often the match lands on the right texture; the exact accuracy of matching by texture alone is printed
  under the table).

Random initialisation and raw pixels are scored beside them (``--baselines``). Each method's row is the
mean of its seeds, with the spread (half the range) after the ±. The table is printed as markdown and
written to ``OUT/region_loss.md``; every command's JSON output is kept in ``OUT/<run>/eval/``. ``--figure``
draws the scores of several study folders (one pretraining budget each) against the number of steps.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from vitlab.checkpoints.atomic import atomic_write_text

LOSSES = {"view": "L_V (DINO)", "view+region": "L_V + L_R (EsViT)", "region": "L_R alone"}
TAGS = {"view": "v", "view+region": "vr", "region": "r"}


def vitlab(*args: str) -> str:
    """Run ``vitlab ARGS`` with this interpreter; its stdout (errors stop the study with the command's own line)."""
    cmd = [sys.executable, "-m", "vitlab", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd[2:])} failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout


def pretrain(out: Path, loss: str, seed: int, threads: int, extra: list[str]) -> Path:
    run = out / f"{TAGS[loss]}_s{seed}"
    if not (run / "final.json").is_file():
        vitlab("pretrain", "--preset", "texture_scenes", "--loss", loss, "--seed", str(seed), "--threads",
               str(threads), "-o", str(run), *extra,
               *(["--resume", str(run)] if (run / "last.pth").is_file() else []))
    return run


def evaluate(run: Path, baselines: bool, threads: int, pairs: int) -> dict[str, list[dict]]:
    """The three evaluators' JSON rows for one run (cached in ``run/eval``; a cached run with baselines serves
    a request without them: its first row is the run)."""
    folder = run / "eval"
    folder.mkdir(exist_ok=True)
    extra = ["--baselines"] if baselines else []
    commands = {"knn": ["knn", "--data", "texture-scenes"],
                "dense": ["dense-probe", "--data", "texture-scenes"],
                "corr": ["correspondence", "--data", "texture-scenes", "--pairs", str(pairs)]}

    def cached(path: Path, key: str) -> list[dict] | None:
        """The rows at ``path``; None when missing or scored otherwise (correspondence from before the
        same-texture score, or with another number of pairs)."""
        if not path.is_file():
            return None
        rows = json.loads(path.read_text())
        stale = key == "corr" and (rows[0].get("same_region") is None or rows[0].get("pairs") != pairs)
        return None if stale else rows
    out = {}
    for key, args in commands.items():
        path = folder / f"{key}{'_baselines' if baselines else ''}.json"
        rows = (None if baselines else cached(folder / f"{key}_baselines.json", key)) or cached(path, key)
        if rows is None:
            atomic_write_text(path, vitlab(*args, "--model", str(run), "--threads", str(threads), "--json", *extra))
            rows = json.loads(path.read_text())
        out[key] = rows
    return out


def metrics(rows: dict[str, list[dict]], i: int) -> dict[str, float]:
    """Row ``i`` (0: the run, 1: random init, 2: raw pixels) of each evaluator."""
    knn = [r for r in rows["knn"] if "mean-centred" not in r["features"]][i]
    return {"knn": knn["top1"], "miou": rows["dense"][i]["mIoU"], "exact": rows["corr"][i]["exact"],
            "within": rows["corr"][i]["within_one"], "dist": rows["corr"][i]["distance_px"],
            "same": rows["corr"][i]["same_region"]}


def study_scores(out: Path, losses: list[str], seeds: list[int], threads: int,
                 pairs: int) -> tuple[dict[tuple[str, int], dict], dict[str, list[dict]] | None]:
    """``({(loss, seed): scores + minutes + steps}, evaluator rows with the baselines)`` of a study folder's
    finished runs (the first finished run is also scored with the baselines)."""
    by_seed, baseline_rows = {}, None
    for loss in losses:
        for seed in seeds:
            run = out / f"{TAGS[loss]}_s{seed}"
            if not (run / "final.json").is_file():
                continue
            rows = evaluate(run, baselines=baseline_rows is None, threads=threads, pairs=pairs)
            baseline_rows = baseline_rows or rows
            final = json.loads((run / "final.json").read_text())
            by_seed[loss, seed] = {**metrics(rows, 0), "min": float(final["minutes"]), "steps": int(final["step"])}
    return by_seed, baseline_rows


def paired_gains(by_seed: dict[tuple[str, int], dict], seeds: list[int]) -> tuple[list[int], dict[str, str]]:
    """L_V + L_R minus L_V for the seeds that have both (same seed: same initialisation and data order)."""
    paired = [s for s in seeds if ("view", s) in by_seed and ("view+region", s) in by_seed]
    return paired, {k: cell([by_seed["view+region", s][k] - by_seed["view", s][k] for s in paired],
                            1 if k == "min" else 2) for k in KEYS} if paired else {}


def seeds_label(n: int) -> str:
    return f"{n} seed{'s' if n > 1 else ''}"


def cell(values: list[float], digits: int = 2) -> str:
    mean = sum(values) / len(values)
    spread = (max(values) - min(values)) / 2
    return f"{mean:.{digits}f} ± {spread:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"


KEYS = ("knn", "miou", "exact", "within", "dist", "same", "min")
HEADER = ("| k-NN top-1 % | dense probe mIoU | correspondence exact % | within one token % | distance error px | "
          "same texture % | minutes per run |")


def table(out: Path, losses: list[str], seeds: list[int], threads: int, pairs: int) -> str:
    by_seed, baseline_rows = study_scores(out, losses, seeds, threads, pairs)
    if baseline_rows is None:
        raise SystemExit(f"no finished run in {out}: pass --train, or wait for the runs")
    lines = ["| features " + HEADER, "|---" * (len(KEYS) + 1) + "|"]
    for loss in losses:
        per_seed = [by_seed[loss, s] for s in seeds if (loss, s) in by_seed]
        if per_seed:
            cols = [cell([m[k] for m in per_seed], 1 if k == "min" else 2) for k in KEYS]
            lines.append(f"| {LOSSES[loss]}, {seeds_label(len(per_seed))} | " + " | ".join(cols) + " |")
    paired, gains = paired_gains(by_seed, seeds)
    if paired:
        lines.append(f"| L_R's gain, paired by seed ({seeds_label(len(paired))}) | "
                     + " | ".join(gains[k] for k in KEYS) + " |")
    for i, label in ((1, "random initialisation"), (2, "raw pixels")):
        m = metrics(baseline_rows, i)
        lines.append(f"| {label} | " + " | ".join(f"{m[k]:.2f}" for k in KEYS[:-1]) + " | - |")
    corr = baseline_rows["corr"][0]
    lines.append(f"\nchance level of an exact match: {corr['chance']:.2f}% ({corr['grid']} tokens); "
                 f"matching by texture alone: {corr['label_oracle']:.2f}%")
    return "\n".join(lines)


def gains_table(outs: list[Path], seeds: list[int], threads: int, pairs: int) -> str:
    """One row per study folder: L_R's gain paired by seed (mean ± half the range)."""
    lines = ["| study | steps | seeds " + HEADER.replace(" per run", ""), "|---" * (len(KEYS) + 3) + "|"]
    for out in outs:
        by_seed, _ = study_scores(out, ["view", "view+region"], seeds, threads, pairs)
        paired, gains = paired_gains(by_seed, seeds)
        if paired:
            lines.append(f"| {out.name} | {by_seed['view', paired[0]]['steps']:,} | {len(paired)} | "
                         + " | ".join(gains[k] for k in KEYS) + " |")
    return "\n".join(lines)


PANELS = (("knn", "k-NN top-1 %"), ("miou", "dense probe mIoU"), ("exact", "correspondence exact %"),
          ("within", "correspondence within one token %"), ("same", "matches on the right texture %"))


def budget_figure(outs: list[Path], losses: list[str], seeds: list[int], threads: int, pairs: int,
                  path: Path) -> None:
    """One panel per score against pretraining steps (one study folder per budget): each loss's seed mean with
    the range as error bars, random initialisation dashed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitlab.checkpoints.atomic import atomic_write
    series, baseline = {loss: [] for loss in losses}, None
    for out in outs:
        by_seed, rows = study_scores(out, losses, seeds, threads, pairs)
        baseline = baseline or (rows and metrics(rows, 1))
        for loss in losses:
            per_seed = [by_seed[loss, s] for s in seeds if (loss, s) in by_seed]
            if per_seed:
                series[loss].append(per_seed)
    if baseline is None:
        raise SystemExit(f"no finished run in {', '.join(map(str, outs))}")
    fig, axes = plt.subplots(1, len(PANELS), figsize=(3.7 * len(PANELS), 3.8), constrained_layout=True)
    for ax, (key, title) in zip(axes, PANELS):
        for i, (loss, points) in enumerate(series.items()):
            if not points:
                continue
            nudge = 1.0 + 0.03 * (i - (len(series) - 1) / 2)                  # side by side, not on top
            steps = [p[0]["steps"] * nudge for p in points]
            vals = [[m[key] for m in p] for p in points]
            mean = [sum(v) / len(v) for v in vals]
            err = [[m - min(v) for m, v in zip(mean, vals)], [max(v) - m for m, v in zip(mean, vals)]]
            ax.errorbar(steps, mean, yerr=err, marker="o", capsize=3, label=LOSSES[loss])
        ax.axhline(baseline[key], color="0.4", ls="--", lw=1, label="random initialisation")
        ax.set_xscale("log")
        ax.set_xticks(sorted({p[0]["steps"] for pts in series.values() for p in pts}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("pretraining steps (batch 32)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    seeds_per_budget = ", ".join(f"{len(p)} at {p[0]['steps']:,}" for p in max(series.values(), key=len))
    fig.suptitle("EsViT on the texture scenes (swin_micro, 5x5 final tokens): view loss alone vs view + region loss; "
                 f"points = mean over seeds ({seeds_per_budget} steps), bars = range", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/scenes", help="folder of the runs (and of the table)")
    p.add_argument("--train", action="store_true", help="pretrain the runs that are not finished yet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--losses", nargs="+", default=["view", "view+region"], choices=list(LOSSES))
    p.add_argument("--epochs", type=int, help="instead of the preset's 30")
    p.add_argument("--lr", type=float, help="per 256 images, instead of the preset's 0.004")
    p.add_argument("--centering", choices=("ema", "sinkhorn"), help="teacher targets, instead of the preset's ema")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pairs", type=int, default=400,
                   help="view pairs for the correspondence accuracy (4 per held-out image by default)")
    p.add_argument("--figure", type=Path, help="draw the scores of the --budgets folders against the steps here")
    p.add_argument("--budgets", type=Path, nargs="+", help="study folders of one pretraining budget each")
    p.add_argument("--gains", type=Path, nargs="+", metavar="DIR",
                   help="print L_R's gain, paired by seed, for each of these study folders")
    args = p.parse_args()
    if args.gains:
        print(gains_table(args.gains, args.seeds, args.threads, args.pairs))
        return
    if args.figure:
        if not args.budgets:
            raise SystemExit("--figure needs --budgets DIR [DIR ...] (study folders of different budgets)")
        budget_figure(args.budgets, args.losses, args.seeds, args.threads, args.pairs, args.figure)
        print(f"wrote {args.figure}")
        return
    out = Path(args.out)
    if args.train:
        out.mkdir(parents=True, exist_ok=True)
        extra = [*(["--epochs", str(args.epochs)] if args.epochs else []), *(["--lr", str(args.lr)] if args.lr else []),
                 *(["--centering", args.centering] if args.centering else [])]
        for seed in args.seeds:
            for loss in args.losses:
                pretrain(out, loss, seed, args.threads, extra)
    text = table(out, args.losses, args.seeds, args.threads, args.pairs)
    atomic_write_text(out / "region_loss.md", text + "\n")
    print(text)


if __name__ == "__main__":
    main()

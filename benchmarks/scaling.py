"""Cost as the input grows: time and peak memory of each token mixer alone, and of whole dense backbones.

    python benchmarks/scaling.py                       # CPU defaults, ~3-5 minutes on 2 cores
    python benchmarks/scaling.py --device cuda --batch 8 --model-sizes 224 384 512 768 1024 --png scaling.png

Each token mixer runs alone (projections included, no norm / MLP / residual) at the width of the
published stage it belongs to, on the token grid that stage sees for a square input of side S:

* outlook attention (VOLO-D1 stage 1): C=192, 6 heads, K=3, s=2 on (S/8)^2 tokens;
* pale attention (Pale-T stage 1): C=64, 2 heads, pale size 7 on (S/4)^2 tokens;
* shifted-window attention (Swin-T stage 1): C=96, 3 heads, window 7, shift 3 on (S/4)^2 tokens;
* global MHRA (UniFormer-S stage 3, i.e. ViT-style global attention): C=320, 5 heads on (S/16)^2 tokens;
* SegViT's ATM decoder (SegViT-B): 3 layers of width 384, 12 heads, 150 class queries attending to
  (S/16)^2 tokens (the cross-attention also returns the mask logits).

Whole backbones (``forward_intermediates``, every stage's map) run at each side, built for that size
(``img_size=S``); their N is (S/16)^2 so that the crossings with ViT-B/16 read directly as input sides.

Per (mixer, size): one untimed call (on CPU it is also the memory measurement), then ``--repeats``
timed forward+backward and forward-only (no grad) calls; the repeats loop over every (mixer, size)
in turn so that a change in machine load hits all sizes alike, and the best (smallest) time of the
repeats is reported, as ``timeit`` does: on a shared machine it is the least disturbed one. Modules run in
eval mode (no dropout) with gradients on (weights and input). Peak memory is that of one
forward+backward call with the weights frozen (activations kept for backward, temporaries, the input
gradient: what grows with N; weight gradients are a constant that would flatten the fit), from
:func:`vitlab.bench.memory.peak_bytes`: on CPU the peak of live tensor bytes the call allocates
(profiler memory events), on CUDA ``max_memory_allocated`` above what was allocated before it.

Growth exponents: least squares of log(cost) on log(N) (``numpy.polyfit``, degree 1), cost ~ c N^e.
Crossing with global attention: the N where the two fitted power laws are equal (global MHRA on the
same N tokens); reported with the input side at which the mixer's stage holds N tokens, or "no
crossing in range" when it falls outside the span of N measured for the two. One PNG (two log-log
panels, time and memory vs N, one line per mixer, its exponent in the legend) and a markdown table.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vitlab.attention.outlook import OutlookAttention
from vitlab.attention.pale import PaleAttention
from vitlab.attention.relation import GlobalMHRA
from vitlab.attention.window import WindowAttention, shifted_window_mask, window_partition, window_reverse
from vitlab.bench.memory import peak_bytes
from vitlab.heads.atm_decoder import ATMDecoder


class ShiftedWindowMixer(nn.Module):
    """Swin's SW-MSA alone on NHWC tokens: zero-pad to the window, cyclic shift, window attention with the
    shift mask, undo (the attention half of ``vitlab.models.swin.SwinBlock``, without norm and residual)."""

    def __init__(self, dim: int, num_heads: int, window: int, shift: int):
        super().__init__()
        self.window, self.shift = window, shift
        self.attn = WindowAttention(dim, window, num_heads)
        self._masks: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h, w, _ = x.shape
        ws = self.window
        x = F.pad(x, (0, 0, 0, (-w) % ws, 0, (-h) % ws))
        hp, wp = x.shape[1:3]
        key = (hp, wp, str(x.device))
        if key not in self._masks:
            self._masks[key] = shifted_window_mask(hp, wp, ws, self.shift).to(x.device)
        x = torch.roll(x, (-self.shift, -self.shift), (1, 2))
        x = window_reverse(self.attn(window_partition(x, ws), self._masks[key]), ws, hp, wp)
        return torch.roll(x, (self.shift, self.shift), (1, 2))[:, :h, :w]


@dataclass
class Mixer:
    """One token mixer at a published stage: ``inputs(side, batch, device)`` -> the tensors ``module`` takes."""

    key: str
    label: str
    stride: int  # the stage's reduction: the mixer sees (side / stride)^2 tokens
    build: Callable[[], nn.Module]
    inputs: Callable[[int, int, torch.device], tuple]

    def tokens(self, side: int) -> int:
        return (side // self.stride) ** 2


def _grid(stride: int, channels: int):
    return lambda side, batch, device: (torch.randn(batch, side // stride, side // stride, channels, device=device),)


def _seq(stride: int, channels: int):
    return lambda side, batch, device: (torch.randn(batch, (side // stride) ** 2, channels, device=device),)


def _atm_inputs(side: int, batch: int, device) -> tuple:
    return (torch.randn(batch, 150, 384, device=device), torch.randn(batch, (side // 16) ** 2, 384, device=device))


MIXERS = {m.key: m for m in [
    Mixer("outlook", "outlook (VOLO-D1 s1, C=192)", 8, lambda: OutlookAttention(192, 6, 3, 1, 2), _grid(8, 192)),
    Mixer("pale", "pale (Pale-T s1, C=64)", 4, lambda: PaleAttention(64, 2, 7), _grid(4, 64)),
    Mixer("swin", "shifted window (Swin-T s1, C=96)", 4, lambda: ShiftedWindowMixer(96, 3, 7, 3), _grid(4, 96)),
    Mixer("global", "global MHRA (UniFormer-S s3, C=320)", 16, lambda: GlobalMHRA(320, 5), _seq(16, 320)),
    Mixer("atm", "ATM decoder (SegViT-B, 150 queries)", 16, lambda: ATMDecoder(384, 12, 3), _atm_inputs),
]}
BACKBONES = ["volo_d1", "pale_tiny", "swin_tiny", "uniformer_small", "vit_base_patch16"]
GLOBAL_MIXER, GLOBAL_BACKBONE = "global", "vit_base_patch16"


# --------------------------------------------------------------------------------------------
# fits
# --------------------------------------------------------------------------------------------
def fit_power_law(n, cost) -> tuple[float, float]:
    """(exponent e, coefficient c) of cost = c * n^e: least squares of log cost on log n (numpy.polyfit)."""
    n, cost = np.asarray(n, dtype=float), np.asarray(cost, dtype=float)
    if n.size < 2 or np.any(n <= 0) or np.any(cost <= 0) or np.unique(n).size < 2:
        raise ValueError(f"a power-law fit needs >= 2 distinct positive sizes and positive costs, got n={n.tolist()}, "
                         f"cost={cost.tolist()}")
    slope, intercept = np.polyfit(np.log(n), np.log(cost), 1)
    return float(slope), float(np.exp(intercept))


def crossing(fit_a: tuple[float, float], fit_b: tuple[float, float]) -> float | None:
    """The n where c_a n^e_a == c_b n^e_b (both fits ``(e, c)``), None for parallel laws."""
    (ea, ca), (eb, cb) = fit_a, fit_b
    if math.isclose(ea, eb, rel_tol=0, abs_tol=1e-9):
        return None
    log_n = (math.log(ca) - math.log(cb)) / (eb - ea)
    return math.exp(log_n) if log_n < 700 else math.inf  # nearly parallel laws meet far away


def describe_crossing(fit: tuple[float, float], global_fit: tuple[float, float], n_range: tuple[float, float],
                      stride: int) -> str:
    """Where ``global_fit`` becomes more (or less) expensive than ``fit`` inside ``n_range``, as text."""
    lo, hi = n_range
    n_star = crossing(fit, global_fit)
    if n_star is not None and lo <= n_star <= hi:
        above = global_fit[0] > fit[0]  # the steeper law is the more expensive one above the crossing
        side = math.sqrt(n_star) * stride
        return f"N≈{n_star:,.0f} (side≈{side:.0f}): global {'costlier' if above else 'cheaper'} above"
    mid = math.sqrt(lo * hi)
    costlier = global_fit[1] * mid ** global_fit[0] > fit[1] * mid ** fit[0]
    return f"no crossing in range (global {'costlier' if costlier else 'cheaper'} throughout)"


# --------------------------------------------------------------------------------------------
# measurement
# --------------------------------------------------------------------------------------------
def scalar(out) -> torch.Tensor:
    """Sum of the means of every tensor in a (nested) output: one backward pass reaches them all."""
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    return sum(scalar(o) for o in out)


@dataclass
class Case:
    """One (mixer or backbone, size): closures for forward+backward and forward, and what was measured."""

    name: str
    side: int
    tokens: int
    train: Callable[[], None]
    infer: Callable[[], None]
    params: list = field(default_factory=list)  # frozen while memory is measured
    peak_mib: float = float("nan")
    train_ms: list[float] = field(default_factory=list)
    infer_ms: list[float] = field(default_factory=list)
    error: str = ""


def mixer_case(mixer: Mixer, side: int, batch: int, device: torch.device) -> Case:
    torch.manual_seed(0)
    module = mixer.build().to(device).eval()
    tensors = [t.requires_grad_() for t in mixer.inputs(side, batch, device)]

    def train():
        scalar(module(*tensors)).backward()
        module.zero_grad(set_to_none=True)
        for t in tensors:
            t.grad = None

    def infer():
        with torch.no_grad():
            module(*tensors)
    return Case(mixer.key, side, mixer.tokens(side), train, infer, list(module.parameters()))


def backbone_case(name: str, side: int, batch: int, device: torch.device) -> Case:
    import vitlab
    torch.manual_seed(0)
    model = vitlab.create_model(name, img_size=side).to(device).eval()
    x = torch.randn(batch, 3, side, side, device=device, requires_grad=True)

    def train():
        scalar(model.forward_intermediates(x)).backward()
        model.zero_grad(set_to_none=True)
        x.grad = None

    def infer():
        with torch.no_grad():
            model.forward_intermediates(x)
    return Case(name, side, (side // 16) ** 2, train, infer, list(model.parameters()))


def _ms(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) * 1e3


def activation_peak_mib(case: Case, device: torch.device) -> float:
    """Peak MiB of one forward+backward with the weights frozen: what grows with the input (saved activations,
    temporaries, the input gradient), without the input-independent weight gradients (ViT-B: 330 MiB)."""
    for p in case.params:
        p.requires_grad_(False)
    try:
        return peak_bytes(case.train, device, above_baseline=True) / 2 ** 20
    finally:
        for p in case.params:
            p.requires_grad_(True)


def measure(cases: list[Case], device: torch.device, repeats: int) -> None:
    """Memory (one call, also the warm-up), then ``repeats`` rounds over all cases timing train and infer."""
    for c in cases:
        try:
            c.peak_mib = activation_peak_mib(c, device)
            c.infer()
        except Exception as e:  # noqa: BLE001 - an OOM at the largest size is a result, not a crash
            c.error = f"{type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
            print(f"  {c.name} at {c.side}: {c.error}", flush=True)
    for r in range(repeats):
        for c in cases:
            if not c.error:
                c.train_ms.append(_ms(c.train, device))
                c.infer_ms.append(_ms(c.infer, device))
        print(f"  round {r + 1}/{repeats} done", flush=True)


@dataclass
class Series:
    """All sizes of one mixer or backbone, with medians and fits."""

    name: str
    label: str
    stride: int
    cases: list[Case]

    @property
    def ok(self) -> list[Case]:
        return [c for c in self.cases if not c.error]

    def values(self, what: str) -> list[float]:
        if what == "mem":
            return [c.peak_mib for c in self.ok]
        return [min(c.train_ms if what == "train" else c.infer_ms) for c in self.ok]

    def fit(self, what: str) -> tuple[float, float] | None:
        ok = self.ok
        if len(ok) < 2:
            return None
        return fit_power_law([c.tokens for c in ok], self.values(what))


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def _exp(fit) -> str:
    return "—" if fit is None else f"{fit[0]:.2f}"


def table(series: list[Series], reference: Series | None, title: str) -> str:
    lines = [f"**{title}**", "",
             "| mixer | sides → N | fwd+bwd ms (best) | fwd ms (best) | activation peak MiB (fwd+bwd) | "
             "exponent time (fwd+bwd / fwd) | "
             "exponent memory | crossing with global (time) | crossing with global (memory) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for s in series:
        ok = s.ok
        sizes = " / ".join(f"{c.side}→{c.tokens:,}" for c in ok) or "—"
        sizes += "".join(f"; {c.side}: {c.error}" for c in s.cases if c.error)
        cells = [" / ".join(f"{v:.1f}" if v < 100 else f"{v:.0f}" for v in s.values(w)) or "—"
                 for w in ("train", "infer", "mem")]
        crossings = []
        for what in ("train", "mem"):
            fit, ref_fit = s.fit(what), reference.fit(what) if reference else None
            if reference is None or s is reference:
                crossings.append("—" if s is reference else "no global series")
            elif fit is None or ref_fit is None:
                crossings.append("needs 2 sizes")
            else:
                n = [c.tokens for c in ok + reference.ok]
                crossings.append(describe_crossing(fit, ref_fit, (min(n), max(n)), s.stride))
        lines.append(f"| {s.label} | {sizes} | {cells[0]} | {cells[1]} | {cells[2]} | "
                     f"{_exp(s.fit('train'))} / {_exp(s.fit('infer'))} | {_exp(s.fit('mem'))} | "
                     f"{crossings[0]} | {crossings[1]} |")
    return "\n".join(lines) + "\n"


def plot(series: list[Series], path: Path, title: str) -> None:
    """Two log-log panels (fwd+bwd time, peak memory vs N), one line per series, fitted exponents in the legend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vitlab.checkpoints.atomic import atomic_path

    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2))
    for ax, what, ylabel in ((axes[0], "train", "forward + backward time (ms)"),
                             (axes[1], "mem", "activation peak memory, forward + backward (MiB)")):
        for s in series:
            ok = s.ok
            if not ok:
                continue
            n, y = [c.tokens for c in ok], s.values(what)
            fit = s.fit(what)
            label = s.label + (f"  ∝ N^{fit[0]:.2f}" if fit else "")
            (line,) = ax.plot(n, y, "o", label=label)
            if fit:
                grid = np.geomspace(min(n), max(n), 50)
                ax.plot(grid, fit[1] * grid ** fit[0], "-", color=line.get_color(), alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tokens N seen by the mixer (log scale)")
        ax.set_ylabel(ylabel + " (log scale)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_title("time vs tokens")
    axes[1].set_title("memory vs tokens")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mixers", nargs="*", default=list(MIXERS), choices=list(MIXERS))
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 384, 512, 768, 1024],
                   help="input sides for the mixers")
    p.add_argument("--models", nargs="*", default=None, help=f"backbones (default {' '.join(BACKBONES)}; none: skip)")
    p.add_argument("--model-sizes", nargs="+", type=int, default=[224, 384, 512], help="input sides for backbones")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per (mixer, size) and mode")
    p.add_argument("--model-repeats", type=int, default=1, help="timed calls per (backbone, size) and mode")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--png", type=Path, default=Path("scaling.png"), help="where to draw the figure")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown tables here")
    args = p.parse_args(argv)
    args.models = BACKBONES if args.models is None else args.models
    for flag in ("batch", "repeats", "model_repeats"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    if min(args.sizes + args.model_sizes) < 32:
        p.error("sizes must be at least 32 pixels (the mixers' token grids are side/4 ... side/16)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {threads} thread{'s' if threads != 1 else ''}"
    title = f"Token-mixer cost vs tokens N · batch {args.batch}, fp32 · {where} · torch {torch.__version__}"
    print(title, flush=True)
    t0 = time.monotonic()
    mixers = [Series(k, MIXERS[k].label, MIXERS[k].stride,
                     [mixer_case(MIXERS[k], s, args.batch, device) for s in args.sizes]) for k in args.mixers]
    report = ""
    if mixers:
        measure([c for s in mixers for c in s.cases], device, args.repeats)
        report = table(mixers, next((s for s in mixers if s.name == GLOBAL_MIXER), None), title)
        plot(mixers, args.png, title)
        print(f"figure: {args.png}")
    if args.models:
        backbones = []
        for name in args.models:  # one model at a time: built per size, measured, freed
            series = Series(name, name, 16, [backbone_case(name, s, args.batch, device) for s in args.model_sizes])
            measure(series.cases, device, args.model_repeats)
            for c in series.cases:
                c.train = c.infer = None
            backbones.append(series)
        ref = next((s for s in backbones if s.name == GLOBAL_BACKBONE), None)
        bb_title = f"Whole backbones (forward_intermediates) · N = (side/16)^2 · crossings against {GLOBAL_BACKBONE}"
        report += ("\n" if report else "") + table(backbones, ref, bb_title).replace("| mixer |", "| model |")
    report += f"\n{time.monotonic() - t0:.0f} s in all.\n"
    print(report)
    if args.out:
        from vitlab.checkpoints.atomic import atomic_write_text
        atomic_write_text(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

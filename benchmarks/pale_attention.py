"""PS-attention speed: the vectorised parallel form (one batched SDPA call per half) against a per-pale loop.

The loop gathers each interlaced row group / column group by index, attends (same SDPA kernel) and
scatters the result back, one group at a time. Both compute the same function (checked here on
every run). Calls are timed interleaved; the table reports median milliseconds and the median of
the per-pair loop / vectorised ratios.

    python benchmarks/pale_attention.py                  # Pale-T stage 1 (56x56, C=64, 2 heads) and more
    python benchmarks/pale_attention.py --device cuda --batch 32 --json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import torch
import torch.nn.functional as F

from vitlab.attention.pale import pale_attention

# (label, H, W, channels, heads, pale): Pale-T's stages at 224, plus a size that needs padding
CASES = [
    ("Pale-T stage 1, 56x56", 56, 56, 64, 2, 7),
    ("Pale-T stage 2, 28x28", 28, 28, 128, 4, 7),
    ("Pale-T stage 3, 14x14", 14, 14, 256, 8, 7),
    ("60x60 (padded to 63)", 60, 60, 64, 2, 7),
]


def per_pale_loop(q, k, v, num_heads: int, pale: int, scale: float) -> torch.Tensor:
    """Reference: one SDPA call per interlaced group and half, tokens gathered and scattered explicitly.

    (B, H, W, C) in and out, like :func:`pale_attention`; the gathers index NCHW views of the maps."""
    q, k, v = (t.permute(0, 3, 1, 2) for t in (q, k, v))
    B, C, H, W = q.shape
    half, hh = C // 2, num_heads // 2
    d = C // num_heads
    out = q.new_empty(B, H, W, C)

    def split(t, n):  # (B, half, n) -> (B, hh, n, d)
        return t.reshape(B, hh, d, n).transpose(-1, -2)

    G = math.ceil(H / pale)
    for g in range(G):
        rows = torch.arange(g, H, G, device=q.device)
        n = len(rows) * W
        o = F.scaled_dot_product_attention(*(split(t[:, :half].index_select(2, rows).reshape(B, half, n), n)
                                             for t in (q, k, v)), scale=scale)
        out[:, rows, :, :half] = o.transpose(-1, -2).reshape(B, half, len(rows), W).permute(0, 2, 3, 1)
    G = math.ceil(W / pale)
    for g in range(G):
        cols = torch.arange(g, W, G, device=q.device)
        n = H * len(cols)
        o = F.scaled_dot_product_attention(*(split(t[:, half:].index_select(3, cols).reshape(B, half, n), n)
                                             for t in (q, k, v)), scale=scale)
        out[:, :, cols, half:] = o.transpose(-1, -2).reshape(B, half, H, len(cols)).permute(0, 2, 3, 1)
    return out


def paired_times(fns, repeats: int, device: str) -> list[list[float]]:
    """Milliseconds per call for each function, measured interleaved (a, b, a, b, ...) so that a
    change in machine load hits both alike; returns one list of times per function."""
    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    for fn in fns:
        fn()
    sync()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, times):
            start = time.perf_counter()
            fn()
            sync()
            out.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    for label, H, W, C, heads, pale in CASES:
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(args.batch, H, W, C, generator=gen).to(args.device, dtype) for _ in range(3))
        scale = (C // heads) ** -0.5
        with torch.no_grad():
            fast = pale_attention(q, k, v, heads, (pale, pale), scale)
            slow = per_pale_loop(q, k, v, heads, pale, scale)
            max_diff = (fast.float() - slow.float()).abs().max().item()
            t_vec, t_loop = paired_times([lambda: pale_attention(q, k, v, heads, (pale, pale), scale),
                                          lambda: per_pale_loop(q, k, v, heads, pale, scale)],
                                         args.repeats, args.device)
        ratio = statistics.median(b / a for a, b in zip(t_vec, t_loop))
        t_vec, t_loop = statistics.median(t_vec), statistics.median(t_loop)
        rows.append({"case": label, "batch": args.batch, "vectorised_ms": round(t_vec, 3),
                     "loop_ms": round(t_loop, 3), "speedup": round(ratio, 2), "max_abs_diff": max_diff})
    if args.json:
        print(json.dumps({"device": args.device, "dtype": args.dtype, "threads": args.threads, "rows": rows}))
        return 0
    print(f"device={args.device} dtype={args.dtype} threads={args.threads} batch={args.batch}")
    print("| case | vectorised ms | per-pale loop ms | loop / vectorised | max abs diff |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['vectorised_ms']:.2f} | {r['loop_ms']:.2f} | {r['speedup']:.2f}x "
              f"| {r['max_abs_diff']:.1e} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Fused SDPA against explicit softmax(q k^T) v at the attention shapes of vitlab's models.

    python benchmarks/attention_kernels.py --threads 1
    python benchmarks/attention_kernels.py --device cuda --dtype bfloat16

For every shape (batch*groups, heads, tokens, head dim) the three ways of computing the same
attention are timed interleaved, forward only (no grad) and forward + backward: the explicit
matrix (as the official code of each paper), ``scaled_dot_product_attention`` with the backend
PyTorch picks, and SDPA restricted to its MATH backend. Median milliseconds; the ratio column is
explicit / SDPA (above 1: SDPA is faster). This is the evidence behind using SDPA on every device.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

# label -> (batch x groups, heads, tokens, head dim) at 224 px, batch 8
SHAPES = {
    "VOLO-D1 stage 2 (14x14)": (8, 12, 196, 32),
    "ViT-B/16": (8, 12, 197, 64),
    "Swin-T stage 1 windows (7x7)": (8 * 64, 3, 49, 32),
    "Pale-T stage 1 half (7 rows x 56)": (8 * 8, 1, 392, 32),
    "UniFormer-S stage 3 (14x14)": (8, 5, 196, 64),
}


def explicit(q, k, v, scale):
    return ((q * scale) @ k.transpose(-2, -1)).softmax(-1) @ v


def fused(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def fused_math(q, k, v, scale):
    with sdpa_kernel([SDPBackend.MATH]):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()}")
    print("| shape | mode | explicit ms | SDPA ms | SDPA (math) ms | explicit / SDPA |")
    print("|---|---|---:|---:|---:|---:|")
    fns = {"explicit": explicit, "sdpa": fused, "math": fused_math}
    for label, (b, h, n, d) in SHAPES.items():
        q, k, v = (torch.randn(b, h, n, d, device=args.device, dtype=dtype, requires_grad=True) for _ in range(3))
        grad = torch.randn_like(q)
        for mode in ("fwd", "fwd+bwd"):
            def call(fn):
                if mode == "fwd":
                    with torch.no_grad():
                        return fn(q, k, v, d ** -0.5)
                return fn(q, k, v, d ** -0.5).backward(grad)
            for fn in fns.values():  # warm-up
                call(fn)
            times = {name: [] for name in fns}
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    sync()
                    start = time.perf_counter()
                    call(fn)
                    sync()
                    times[name].append((time.perf_counter() - start) * 1e3)
            ms = {name: statistics.median(t) for name, t in times.items()}
            print(f"| {label} | {mode} | {ms['explicit']:.1f} | {ms['sdpa']:.1f} | {ms['math']:.1f} | "
                  f"x{ms['explicit'] / ms['sdpa']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

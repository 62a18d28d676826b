"""Top operators of a VOLO-D1 training step (and inference) under torch.profiler.

    python benchmarks/profile_volo.py --batch 8 --img 224 --threads 2
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import vitlab


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="volo_d1")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rows", type=int, default=15)
    p.add_argument("--implementation", default="auto", help="outlook attention: auto, torch or reference")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = vitlab.create_model(args.model).train()
    for m in model.modules():
        if hasattr(m, "implementation"):
            m.implementation = args.implementation
    x = torch.randn(args.batch, 3, args.img, args.img)
    target = torch.randint(0, 1000, (args.batch,))

    def step():
        out = model.forward_train(x)  # class logits + token logits (the token-labeling loss's inputs)
        (F.cross_entropy(out.logits, target) + 0.5 * out.aux_logits.mean()).backward()
        model.zero_grad(set_to_none=True)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    print(f"{args.model} training step, batch {args.batch} at {args.img}, outlook={args.implementation}, "
          f"{torch.get_num_threads()} threads")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Faithful reference computations of the published code, swapped into vitlab models for benchmarks
(``benchmarks/compare.py``, ``vitlab bench --reference``).

Each reference computes the same function as vitlab's fused path (the benchmark checks the outputs
agree) but the way the official implementations do it:

- VOLO: outlook attention by unfold -> matmul -> fold; global and class attention with an explicit
  softmax(q k^T) matrix (sail-sg/volo ``Attention`` / ``ClassAttention``).
- Swin: window attention with an explicit softmax matrix, bias and shift mask added to the logits.
- Pale: a Python loop over pales, gathering each group's interlaced rows / columns and attending
  within it (the per-pale formulation of arXiv 2112.14000 Sec. 3.1).
- UniFormer / ViT: local MHRA as the official depthwise convolutions (same as vitlab), global MHRA
  with an explicit softmax matrix.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F


def explicit_attention(q, k, v, scale=None, dropout_p=0.0, attn_mask=None):
    """softmax(q k^T * scale + mask) v with the attention matrix materialised (as the official code)."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    logits = (q * scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    attn = F.dropout(logits.softmax(dim=-1), dropout_p)
    return attn @ v


def explicit_window_attention(x, qkv_weight, qkv_bias, proj_weight, proj_bias, num_heads, bias, mask=None,
                              scale=None, dropout_p=0.0):
    """Swin's W-MSA as in the official code: logits + bias, (+ shift mask per window), softmax, @ v."""
    bw, n, c = x.shape
    d = c // num_heads
    q, k, v = F.linear(x, qkv_weight, qkv_bias).reshape(bw, n, 3, num_heads, d).permute(2, 0, 3, 1, 4)
    logits = (q * (scale if scale is not None else d ** -0.5)) @ k.transpose(-2, -1) + bias.unsqueeze(0)
    if mask is not None:
        nw = mask.shape[0]
        logits = (logits.view(bw // nw, nw, num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)).view(-1, num_heads, n, n)
    attn = F.dropout(logits.softmax(dim=-1), dropout_p)
    out = (attn @ v).transpose(1, 2).reshape(bw, n, c)
    return F.linear(out, proj_weight, proj_bias)


def per_pale_attention(q, k, v, num_heads, pale_size, scale=None, dropout_p=0.0):
    """PS-attention with a loop over pales: gather the interlaced rows (columns) of each group, attend, scatter."""
    B, H, W, C = q.shape
    half, hh, d = C // 2, num_heads // 2, C // num_heads
    scale = scale if scale is not None else d ** -0.5
    out = torch.empty_like(q)
    groups_r, groups_c = -(-H // pale_size[0]), -(-W // pale_size[1])
    for g in range(groups_r):  # row half: rows g, g+G, g+2G, ...
        rows = torch.arange(g, H, groups_r, device=q.device)
        part = [t[:, rows, :, :half].reshape(B, -1, hh, d).transpose(1, 2) for t in (q, k, v)]
        o = explicit_attention(*part, scale=scale, dropout_p=dropout_p)
        out[:, rows, :, :half] = o.transpose(1, 2).reshape(B, len(rows), W, half)
    for g in range(groups_c):  # column half
        cols = torch.arange(g, W, groups_c, device=q.device)
        part = [t[:, :, cols, half:].transpose(1, 2).reshape(B, -1, hh, d).transpose(1, 2) for t in (q, k, v)]
        o = explicit_attention(*part, scale=scale, dropout_p=dropout_p)
        out[:, :, cols, half:] = o.transpose(1, 2).reshape(B, len(cols), H, half).transpose(1, 2)
    return out


@contextlib.contextmanager
def reference_paths(model: torch.nn.Module):
    """Within the block, ``model`` (and every vitlab model) computes attention the reference way."""
    import vitlab.attention.class_attention as class_attention
    import vitlab.attention.global_ as global_
    patches = [(global_, "multi_head_attention", explicit_attention),
               (class_attention, "multi_head_attention", explicit_attention)]
    with contextlib.suppress(ImportError):
        import vitlab.models.vit as vit
        patches.append((vit, "multi_head_attention", explicit_attention))
    with contextlib.suppress(ImportError):
        import vitlab.attention.window as window
        patches.append((window, "window_attention", explicit_window_attention))
    with contextlib.suppress(ImportError):
        import vitlab.attention.pale as pale
        patches.append((pale, "pale_attention", per_pale_attention))
    saved = [(mod, name, getattr(mod, name)) for mod, name, _ in patches if hasattr(mod, name)]
    outlook = [m for m in model.modules() if hasattr(m, "implementation")]
    old_impl = [m.implementation for m in outlook]
    try:
        for mod, name, fn in patches:
            if hasattr(mod, name):
                setattr(mod, name, fn)
        for m in outlook:
            m.implementation = "reference"
        yield model
    finally:
        for mod, name, fn in saved:
            setattr(mod, name, fn)
        for m, impl in zip(outlook, old_impl):
            m.implementation = impl


def compare_with_reference(model: torch.nn.Module, example: torch.Tensor, train: bool = False, warmup: int = 2,
                           iters: int = 5, amp_dtype: torch.dtype | None = None) -> dict:
    """vitlab's path against :func:`reference_paths` on the same model and weights, timed interleaved.

    Returns images/s of both, their ratio (``*_speedup`` > 1: vitlab is faster) and the largest output
    difference between the two paths (they compute the same function)."""
    from vitlab.bench.throughput import autocast_factory, inference_step, time_interleaved, training_step
    device, batch = example.device, example.shape[0]
    autocast = autocast_factory(device, amp_dtype)

    def first(out):  # logits; a dense backbone returns a list of maps
        return (out[0] if isinstance(out, (tuple, list)) else out).float()

    def with_path(fn, reference):
        def run():
            with reference_paths(model) if reference else contextlib.nullcontext():
                return fn()
        return run

    infer = inference_step(model, example, autocast)
    model.eval()
    ours, ref = with_path(infer, False)(), with_path(infer, True)()
    result = {"max_abs_diff": float((first(ours) - first(ref)).abs().max())}
    sec = time_interleaved({"vitlab": with_path(infer, False), "reference": with_path(infer, True)},
                           device, warmup, iters)
    result.update(vitlab_infer_img_s=batch / sec["vitlab"], infer_img_s=batch / sec["reference"],
                  infer_speedup=sec["reference"] / sec["vitlab"])
    if train:
        step = training_step(model, example, autocast)
        sec = time_interleaved({"vitlab": with_path(step, False), "reference": with_path(step, True)},
                               device, warmup, iters)
        result.update(vitlab_train_img_s=batch / sec["vitlab"], train_img_s=batch / sec["reference"],
                      train_speedup=sec["reference"] / sec["vitlab"])
        model.eval()
    return {k: round(v, 3) if k != "max_abs_diff" else v for k, v in result.items()}

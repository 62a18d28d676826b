"""Outlook attention (Yuan et al., "VOLO: Vision Outlooker for Visual Recognition", arXiv 2106.13112, Sec. 3.1).

The attention weights of each K x K window are *generated* from the window's centre token by a
linear layer (no query-key product): A = softmax(Linear(AvgPool_s(X)) * d^-1/2) in R^{K^2 x K^2}.
Every window aggregates its values Y_w = A . V_w, and overlapping window outputs are **summed**
back onto the map (fold, no renormalisation).

Two exact implementations of the same math:

- ``outlook_attention_reference``: the published unfold -> matmul -> fold path. It materialises
  K^2/s^2 copies of the values twice (unfold, and the fold input) and keeps them for backward.
- ``outlook_attention`` (default): fold-free. Every output pixel y receives, through each window
  that covers it, weights over values at offsets a' - a in [-(K-1), K-1]; summing over the windows
  turns the K^4 weights of each window into per-pixel (2K-1)^2 neighbourhood weights
  (``neighbourhood_weights``, small: about the size of the generated weights), and the output is a
  dynamic neighbourhood aggregation ``Y[y] = sum_o W[y, o] V[y + o]`` over the raw values, with no
  copy of V per window slot. Eager mode runs it as one autograd function (``_FoldFreeOutlook``)
  whose backward keeps only V and the window weights; under ``torch.compile`` a compact functional
  form (``_fold_free_functional``) is traced instead; on CUDA, when Triton is importable, fused
  kernels compute the aggregation and its gradients (``outlook_triton``). Before the first use of
  those kernels on a device and dtype, a small forward/backward self-check compares them with the
  PyTorch path (``_triton_self_check``); "auto" falls back to PyTorch (with one warning) if they
  disagree or fail, an explicit "triton" raises.
"""
from __future__ import annotations

import contextlib
import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from .outlook_op import outlook_aggregate

IMPLEMENTATIONS = ("auto", "torch", "triton", "reference")


# --------------------------------------------------------------------------------------------
# reference: unfold / matmul / fold, as the published code computes it
# --------------------------------------------------------------------------------------------
@torch.compiler.disable
def _fold(x: torch.Tensor, output_size, kernel_size: int, padding: int, stride: int) -> torch.Tensor:
    """``F.fold`` run eagerly: inductor's col2im lowering corrupts the heap on CPU with >1 thread."""
    return F.fold(x, output_size=output_size, kernel_size=kernel_size, padding=padding, stride=stride)


def outlook_attention_reference(v: torch.Tensor, attn: torch.Tensor, num_heads: int, kernel_size: int = 3,
                                padding: int = 1, stride: int = 2) -> torch.Tensor:
    """Unfold/fold outlook attention on NHWC values ``v`` (B, H, W, C); see ``outlook_attention``."""
    B, H, W, C = v.shape
    d = C // num_heads
    k2 = kernel_size * kernel_size
    v_nchw = v.permute(0, 3, 1, 2)
    if stride == 1:
        big = 2 * kernel_size - 1
        n = H * W
        # (B, C*(2K-1)^2, H*W) -> (B, heads, H*W, (2K-1)^2, d)
        v_win = F.unfold(v_nchw, big, padding=2 * padding).reshape(B, num_heads, d, big * big, n).permute(0, 1, 4, 3, 2)
        w = _fold(attn.reshape(B * num_heads * n, k2, k2), (big, big), kernel_size, 0, 1)
        w = w.reshape(B, num_heads, n, 1, big * big)
        return (w @ v_win).transpose(1, 2).reshape(B, H, W, C)
    h, w = _window_grid(H, W, kernel_size, padding, stride, attn.shape[2])
    # unfolded channel index is (head*d + c)*K^2 + slot
    v_win = F.unfold(v_nchw, kernel_size, padding=padding, stride=stride)
    v_win = v_win.reshape(B, num_heads, d, k2, h * w).permute(0, 1, 4, 3, 2)  # B, heads, hw, K^2, d
    out = (attn @ v_win).permute(0, 1, 4, 3, 2).reshape(B, C * k2, h * w)
    out = _fold(out, (H, W), kernel_size, padding, stride)
    return out.permute(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# fold-free: window weights -> per-pixel neighbourhood weights -> neighbourhood aggregation
# --------------------------------------------------------------------------------------------
def _window_grid(H: int, W: int, kernel_size: int, padding: int, stride: int, num_windows: int) -> tuple[int, int]:
    """Window grid (h, w) that unfold(kernel_size, padding, stride) gives on an H x W map; checks ``num_windows``."""
    h = (H + 2 * padding - kernel_size) // stride + 1
    w = (W + 2 * padding - kernel_size) // stride + 1
    if h < 1 or w < 1 or h * w != num_windows:
        raise ValueError(f"outlook attention on a {H}x{W} map with kernel {kernel_size}, padding {padding}, stride "
                         f"{stride} has {max(h, 0)}x{max(w, 0)} windows, but the weights hold {num_windows} "
                         f"(the pooled grid must match the window grid: pick padding = (kernel_size - 1) // 2 "
                         f"and stride dividing into the map size)")
    return h, w


def neighbourhood_weights(attn: torch.Tensor, H: int, W: int, kernel_size: int, padding: int,
                          stride: int) -> torch.Tensor:
    """Collapse generated window weights into per-pixel neighbourhood weights.

    ``attn`` (B, heads, n, K^2, K^2) [window, output slot, input slot] -> (F*F, B, H, W, heads) with
    F = 2K - 1, frame index o = (fy, fx) weighting the value at (y + fy - c, x + fx - c),
    c = ``neighbourhood_centre(...)``. Functional (pads, adds, a pixel shuffle): what ``torch.compile``
    traces; eager code uses the in-place twin ``_build_frames``.

    stride > 1: window i covers rows i*s - p + a (a < K); its output slot a and input slot a' are
    a' - a apart, so slot pair (a, a') lands in frame row K-1 + a' - a of pixel y = i*s - p + a.
    Writing a = q*s + r, that pixel is coarse cell i + q at phase r: a padded shift per slot and a
    pixel shuffle of the s x s phases place every contribution without any scatter.
    stride == 1 (the published per-pixel variant): pixel n's own K^2 x K^2 matrix is folded into
    its frame at a + a', i.e. every output slot a shifts its row of weights by a.
    """
    B, heads, n, k2, _ = attn.shape
    K, s, p = kernel_size, stride, padding
    Fr = 2 * K - 1
    if s == 1:
        if n != H * W:
            raise ValueError(f"stride-1 outlook weights need one matrix per pixel ({H * W}), got {n}")
        a8 = attn.reshape(B, heads, H, W, K, K, K, K)
        acc = None
        for a in range(K):
            for b in range(K):
                t = F.pad(a8[:, :, :, :, a, b], (b, Fr - K - b, a, Fr - K - a))
                acc = t if acc is None else acc + t
        frames = acc  # B, heads, H, W, F, F
    else:
        h, w = _window_grid(H, W, K, p, s, n)
        q_max = -(-K // s)  # ceil(K / s): coarse cells one window reaches
        hc = max(h + q_max - 1, -(-(H + p) // s))
        wc = max(w + q_max - 1, -(-(W + p) // s))
        a8 = attn.reshape(B, heads, h, w, K, K, K, K)
        phases: list[list[torch.Tensor | None]] = [[None] * s for _ in range(s)]
        for a in range(K):
            qa, ra = divmod(a, s)
            for b in range(K):
                qb, rb = divmod(b, s)
                t = F.pad(a8[:, :, :, :, a, b], (K - 1 - b, b, K - 1 - a, a, qb, wc - w - qb, qa, hc - h - qa))
                phases[ra][rb] = t if phases[ra][rb] is None else phases[ra][rb] + t
        zero = attn.new_zeros(B, heads, hc, wc, Fr, Fr)
        rows = [torch.stack([t if t is not None else zero for t in row], dim=4) for row in phases]
        frames = torch.stack(rows, dim=3).reshape(B, heads, hc * s, wc * s, Fr, Fr)  # pixel shuffle
        frames = frames[:, :, p:p + H, p:p + W]
    return frames.permute(4, 5, 0, 2, 3, 1).reshape(Fr * Fr, B, H, W, heads)


def _fold_free_functional(v: torch.Tensor, attn: torch.Tensor, kernel_size: int, padding: int,
                          stride: int) -> torch.Tensor:
    """The fold-free math in a few differentiable ops for ``torch.compile``.

    The (2K-1)^2 neighbourhood of every pixel is a strided *view* of the padded values, and the
    weighted sum over it is one reduction that inductor fuses, so nothing per offset is materialised.
    """
    B, H, W, heads, d = v.shape
    Fr, c = 2 * kernel_size - 1, neighbourhood_centre(kernel_size, padding, stride)
    weights = neighbourhood_weights(attn, H, W, kernel_size, padding, stride)  # F*F, B, H, W, heads
    weights = weights.reshape(Fr, Fr, B, H, W, heads).permute(2, 3, 4, 5, 0, 1).unsqueeze(4)
    vp = F.pad(v, (0, 0, 0, 0, c, Fr - 1 - c, c, Fr - 1 - c))
    windows = vp.unfold(1, Fr, 1).unfold(2, Fr, 1)  # B, H, W, heads, d, F, F (a view)
    return (windows * weights.to(v.dtype)).sum(dim=(-2, -1))


def neighbourhood_centre(kernel_size: int, padding: int, stride: int) -> int:
    """Frame index of offset zero: K-1 for stride > 1, 2*padding for the stride-1 variant."""
    return 2 * padding if stride == 1 else kernel_size - 1


def _frame_slot_views(buffer: torch.Tensor, attn: torch.Tensor, H: int, W: int, kernel_size: int, padding: int,
                      stride: int):
    """Yield (frame-buffer view, attn slot view) pairs, one per output slot (a, b), in matching layouts.

    ``buffer`` is (F, F, B, Hb, Wb, heads) over padded pixel coordinates (see ``_frame_buffer_shape``);
    each frame view is (K, K, B, h, w, heads) and each slot view of ``attn`` is permuted to the same.
    """
    B, heads, n = attn.shape[:3]
    K, s = kernel_size, stride
    if s == 1:
        a8 = attn.reshape(B, heads, H, W, K, K, K, K)
        for a in range(K):
            for b in range(K):
                yield buffer[a:a + K, b:b + K], a8[:, :, :, :, a, b].permute(4, 5, 0, 2, 3, 1)
        return
    h, w = _window_grid(H, W, K, padding, s, n)
    Fr = 2 * K - 1
    hc, wc = buffer.shape[3] // s, buffer.shape[4] // s
    phased = buffer.view(Fr, Fr, B, hc, s, wc, s, heads)
    a8 = attn.reshape(B, heads, h, w, K, K, K, K)
    for a in range(K):
        qa, ra = divmod(a, s)
        for b in range(K):
            qb, rb = divmod(b, s)
            frame = phased[K - 1 - a:2 * K - 1 - a, K - 1 - b:2 * K - 1 - b, :, qa:qa + h, ra, qb:qb + w, rb]
            yield frame, a8[:, :, :, :, a, b].permute(4, 5, 0, 2, 3, 1)


def _frame_buffer_shape(attn: torch.Tensor, H: int, W: int, kernel_size: int, padding: int, stride: int):
    B, heads, n = attn.shape[:3]
    Fr = 2 * kernel_size - 1
    if stride == 1:
        return (Fr, Fr, B, H, W, heads), 0
    h, w = _window_grid(H, W, kernel_size, padding, stride, n)
    q_max = -(-kernel_size // stride)  # ceil(K / s): coarse cells one window reaches
    hc = max(h + q_max - 1, -(-(H + padding) // stride))
    wc = max(w + q_max - 1, -(-(W + padding) // stride))
    return (Fr, Fr, B, hc * stride, wc * stride, heads), padding


def _build_frames(attn: torch.Tensor, H: int, W: int, kernel_size: int, padding: int, stride: int):
    """Neighbourhood weights in one zero-initialised buffer (K^2 strided adds, no per-slot copies)."""
    shape, offset = _frame_buffer_shape(attn, H, W, kernel_size, padding, stride)
    buffer = attn.new_zeros(shape)
    for frame, slot in _frame_slot_views(buffer, attn, H, W, kernel_size, padding, stride):
        frame.add_(slot)
    return buffer, offset


def _batch_chunks(v: torch.Tensor, target_elems: int = 1 << 23):
    """Batch slices of about ``target_elems`` values each: bounds the temporaries while keeping the op count low."""
    per_item = max(1, v[0].numel())
    step = max(1, target_elems // per_item)
    return [slice(b, min(b + step, v.shape[0])) for b in range(0, v.shape[0], step)]


def _aggregation_steps(v: torch.Tensor, Fr: int, centre: int, offset: int):
    """(output index, value index, frame index) for every frame entry o that reads inside the map.

    Output pixels ``out[out_idx]`` read the values ``v[value_idx]`` (shifted by the entry's offset);
    ``frame_idx`` selects W[o] for those pixels in the padded frame buffer. Batches come in chunks.
    """
    H, W = v.shape[1], v.shape[2]
    for bs in _batch_chunks(v):
        for o in range(Fr * Fr):
            dy, dx = o // Fr - centre, o % Fr - centre
            y0, y1, x0, x1 = max(0, -dy), min(H, H - dy), max(0, -dx), min(W, W - dx)
            if y1 <= y0 or x1 <= x0:
                continue
            idx = (o // Fr, o % Fr, bs, slice(offset + y0, offset + y1), slice(offset + x0, offset + x1))
            yield (bs, slice(y0, y1), slice(x0, x1)), (bs, slice(y0 + dy, y1 + dy), slice(x0 + dx, x1 + dx)), idx


def fold_free_forward(v: torch.Tensor, attn: torch.Tensor, kernel_size: int, padding: int,
                      stride: int) -> torch.Tensor:
    """Y[y] = sum_o W[o, y] V[y + o] on (B, H, W, heads, d) values, W built from ``attn`` in one buffer."""
    Fr, c = 2 * kernel_size - 1, neighbourhood_centre(kernel_size, padding, stride)
    frames, off = _build_frames(attn, v.shape[1], v.shape[2], kernel_size, padding, stride)
    acc_dtype = torch.float32 if v.dtype in (torch.float16, torch.bfloat16) else v.dtype
    out = torch.zeros(v.shape, dtype=acc_dtype, device=v.device)
    for out_idx, v_idx, idx in _aggregation_steps(v, Fr, c, off):
        out[out_idx].addcmul_(v[v_idx], frames[idx].unsqueeze(-1))
    return out.to(v.dtype)


def fold_free_backward(grad_out: torch.Tensor, v: torch.Tensor, attn: torch.Tensor, kernel_size: int, padding: int,
                       stride: int, need_v: bool = True, need_attn: bool = True):
    """(grad of v, grad of attn) of :func:`fold_free_forward` (None where not needed); W is rebuilt, not saved."""
    H, W = v.shape[1], v.shape[2]
    Fr, c = 2 * kernel_size - 1, neighbourhood_centre(kernel_size, padding, stride)
    frames, off = _build_frames(attn, H, W, kernel_size, padding, stride)
    grad_out = grad_out.to(v.dtype)
    frame_shape = frames.shape
    grad_v = grad_attn = None
    if need_v:
        grad_v = torch.zeros_like(v)
        for out_idx, v_idx, idx in _aggregation_steps(v, Fr, c, off):
            grad_v[v_idx].addcmul_(grad_out[out_idx], frames[idx].unsqueeze(-1))
    del frames  # freed before its gradient is made: lower peak memory
    if need_attn:
        grad_frames = attn.new_zeros(frame_shape)
        for out_idx, v_idx, idx in _aggregation_steps(v, Fr, c, off):
            grad_frames[idx] = (grad_out[out_idx] * v[v_idx]).sum(-1)
        grad_attn = attn.new_empty(attn.shape)
        for frame, slot in _frame_slot_views(grad_frames, grad_attn, H, W, kernel_size, padding, stride):
            slot.copy_(frame)
    return grad_v, grad_attn


class _FoldFreeOutlook(torch.autograd.Function):
    """Y[y] = sum_o W[o, y] V[y + o]; W built from the window weights on the fly (also in backward).

    Saves only ``v`` and ``attn`` (``attn`` is kept alive by the softmax anyway): no per-slot copy of
    the values and no neighbourhood-weight tensor survive the forward pass.
    """

    @staticmethod
    def forward(v, attn, kernel_size, padding, stride):
        return fold_free_forward(v, attn, kernel_size, padding, stride)

    @staticmethod
    def setup_context(ctx, inputs, output):
        v, attn, kernel_size, padding, stride = inputs
        ctx.save_for_backward(v, attn)
        ctx.geometry = (kernel_size, padding, stride)

    @staticmethod
    def backward(ctx, grad_out):
        v, attn = ctx.saved_tensors
        grad_v, grad_attn = fold_free_backward(grad_out, v, attn, *ctx.geometry, need_v=ctx.needs_input_grad[0],
                                               need_attn=ctx.needs_input_grad[1])
        return grad_v, grad_attn, None, None, None


def _triton_available(v: torch.Tensor) -> bool:
    if not v.is_cuda or torch.compiler.is_compiling():
        return False
    from . import outlook_triton
    return outlook_triton.is_available()


# One self-check of the Triton kernels per (device, dtype) and process: key -> (ok, reason, exception).
_TRITON_CHECK: dict[tuple[str, torch.dtype], tuple[bool, str, BaseException | None]] = {}
_TRITON_WARNED: set[tuple[str, torch.dtype]] = set()
_TRITON_CHECKING = False  # set while the check runs: no recursion into it


def reset_triton_check() -> None:
    """Forget the cached Triton self-check results (for tests)."""
    _TRITON_CHECK.clear()
    _TRITON_WARNED.clear()


def _triton_tolerance(dtype: torch.dtype) -> float:
    return 1e-4 if dtype in (torch.float32, torch.float64) else 2e-2


def _triton_self_check(device: torch.device, dtype: torch.dtype) -> tuple[bool, str, BaseException | None]:
    """Compare the Triton kernels with the PyTorch path on a small input: output, grad of v and of attn.

    B=1, 2 heads of 8 channels, a 10 x 12 map, kernel 3, strides 2 and 1, in ``dtype`` on ``device``;
    the reference is the fold-free PyTorch path in float32 on the same (dtype-rounded) inputs.
    """
    from . import outlook_triton

    where = f"{device} {dtype}"
    tol = _triton_tolerance(dtype)
    B, H, W, heads, d, K, p = 1, 10, 12, 2, 8, 3, 1
    gen = torch.Generator().manual_seed(0)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.enable_grad())
            if device.type in ("cuda", "cpu"):
                stack.enter_context(torch.autocast(device_type=device.type, enabled=False))
            for s in (2, 1):
                n = H * W if s == 1 else ((H + 2 * p - K) // s + 1) * ((W + 2 * p - K) // s + 1)
                v = torch.randn(B, H, W, heads, d, generator=gen).to(device=device, dtype=dtype)
                attn = torch.randn(B, heads, n, K * K, K * K, generator=gen).softmax(-1).to(device=device, dtype=dtype)
                grad = torch.randn(B, H, W, heads, d, generator=gen).to(device=device, dtype=dtype)
                results = []
                for fn, cast in ((_FoldFreeOutlook.apply, torch.float32),
                                 (outlook_triton.triton_outlook_attention, dtype)):
                    vi = v.detach().to(cast).requires_grad_()
                    ai = attn.detach().to(cast).requires_grad_()
                    out = fn(vi, ai, K, p, s)
                    gv, ga = torch.autograd.grad(out, (vi, ai), grad.to(out.dtype))
                    results.append((out.detach().float(), gv.float(), ga.float()))
                for name, ref, got in zip(("output", "grad of v", "grad of attn"), *results):
                    if ref.shape != got.shape:
                        return False, (f"Triton outlook kernel disagrees with the PyTorch path on {where}: {name} "
                                       f"(stride {s}) has shape {tuple(got.shape)}, expected {tuple(ref.shape)}"), None
                    diff = (ref - got).abs().max().item()
                    rel = diff / max(ref.abs().max().item(), 1e-12)
                    if not rel <= tol:  # also catches NaN
                        return False, (f"Triton outlook kernel disagrees with the PyTorch path on {where}: {name} "
                                       f"(stride {s}) max abs difference {diff:.3g} (relative {rel:.3g} > "
                                       f"tolerance {tol:g})"), None
    except Exception as exc:  # compile error, launch failure, missing triton, ...
        return False, f"Triton outlook kernel failed its self-check on {where}: {type(exc).__name__}: {exc}", exc
    return True, "", None


def _triton_verified(v: torch.Tensor, strict: bool) -> bool:
    """Whether to run the Triton kernel for ``v``'s device and dtype, self-checking it on first use.

    ``strict`` (implementation="triton") raises if the check failed; otherwise ("auto") the first
    failure warns once and the PyTorch path is used from then on. While compiling or tracing (and
    inside the check itself) nothing is run: the cached decision is used, else Triton only if strict.
    """
    global _TRITON_CHECKING
    key = (str(v.device), v.dtype)
    result = _TRITON_CHECK.get(key)
    if result is None:
        if _TRITON_CHECKING or torch.compiler.is_compiling() or torch.jit.is_tracing() or v.device.type == "meta":
            return strict
        _TRITON_CHECKING = True
        try:
            result = _TRITON_CHECK[key] = _triton_self_check(v.device, v.dtype)
        finally:
            _TRITON_CHECKING = False
    ok, reason, exc = result
    if ok:
        return True
    if strict:
        raise RuntimeError(reason) from exc
    if key not in _TRITON_WARNED:
        _TRITON_WARNED.add(key)
        warnings.warn(f"{reason}; using the PyTorch outlook attention (implementation='torch') instead for "
                      f"the rest of this process", RuntimeWarning, stacklevel=3)
    return False


def _fold_free_path(v: torch.Tensor, attn: torch.Tensor):
    """Eager: the autograd function. Compiled training (gradients wanted): the custom op, whose backward
    inductor does not trace. Compiled inference, ``torch.export`` and TorchScript/ONNX tracing: the
    functional form, which they can fuse or translate."""
    if torch.jit.is_tracing() or torch.compiler.is_exporting():
        return _fold_free_functional
    if not torch.compiler.is_compiling():
        return _FoldFreeOutlook.apply
    if torch.is_grad_enabled() and (v.requires_grad or attn.requires_grad):
        return outlook_aggregate
    return _fold_free_functional


def outlook_attention(v: torch.Tensor, attn: torch.Tensor, num_heads: int, kernel_size: int = 3,
                      padding: int = 1, stride: int = 2, implementation: str = "auto") -> torch.Tensor:
    """Aggregate values ``v`` (B, H, W, C) with generated window weights ``attn``; returns (B, H, W, C).

    ``attn`` holds softmax-normalised weights of shape (B, heads, h*w, K*K, K*K) for ``stride > 1``
    (one K^2 x K^2 matrix per window, output slot i x input slot j, windows on the h x w grid that
    unfold(K, padding, stride) gives), or (B, heads, H*W, K*K, K*K) for ``stride == 1``, where the
    published code folds each position's matrix into (2K-1)^2 neighbourhood weights.
    ``implementation``: "auto" (Triton on CUDA when available and its one-time self-check against
    "torch" passes, else "torch"), "torch" (fold-free, plain PyTorch), "triton" (raises if the
    self-check fails), or "reference" (unfold/fold). All give the same result.
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if v.ndim != 4 or attn.ndim != 5:
        raise ValueError(f"outlook_attention expects v (B, H, W, C) and attn (B, heads, n, K^2, K^2), got "
                         f"{tuple(v.shape)} and {tuple(attn.shape)}")
    B, H, W, C = v.shape
    k2 = kernel_size * kernel_size
    if C % num_heads or attn.shape[1] != num_heads or attn.shape[-2:] != (k2, k2):
        raise ValueError(f"outlook_attention: {C} channels, {num_heads} heads and kernel {kernel_size} need attn "
                         f"(B, {num_heads}, n, {k2}, {k2}), got {tuple(attn.shape)}")
    if implementation == "reference":
        return outlook_attention_reference(v, attn, num_heads, kernel_size, padding, stride)
    v5 = v.reshape(B, H, W, num_heads, C // num_heads)
    use_triton = implementation == "triton" or (implementation == "auto" and _triton_available(v))
    if use_triton and _triton_verified(v, strict=implementation == "triton"):
        from .outlook_triton import triton_outlook_attention
        out = triton_outlook_attention(v5, attn, kernel_size, padding, stride)
    else:
        out = _fold_free_path(v5, attn)(v5, attn, kernel_size, padding, stride)
    return out.reshape(B, H, W, C)


class OutlookAttention(nn.Module):
    """Outlook attention on NHWC tokens. State-dict keys (``v``, ``attn``, ``proj``) follow the official code.

    ``implementation`` picks the kernel (see ``outlook_attention``); it can be changed at any time.
    """

    def __init__(self, dim: int, num_heads: int, kernel_size: int = 3, padding: int = 1, stride: int = 1,
                 qkv_bias: bool = False, qk_scale: float | None = None, attn_drop: float = 0.0, proj_drop: float = 0.0,
                 implementation: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.num_heads, self.kernel_size, self.padding, self.stride = num_heads, kernel_size, padding, stride
        self.implementation = implementation
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn = nn.Linear(dim, kernel_size ** 4 * num_heads)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Generated weights (B, heads, windows, K^2, K^2) from the (pooled) centre tokens of ``x`` (NHWC)."""
        B = x.shape[0]
        if self.stride > 1:
            x = F.avg_pool2d(x.permute(0, 3, 1, 2), self.stride, self.stride, ceil_mode=True).permute(0, 2, 3, 1)
        n = x.shape[1] * x.shape[2]
        k2 = self.kernel_size ** 2
        a = self.attn(x).reshape(B, n, self.num_heads, k2, k2).permute(0, 2, 1, 3, 4)
        return self.attn_drop((a * self.scale).softmax(dim=-1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = outlook_attention(self.v(x), self.attention_weights(x), self.num_heads,
                                self.kernel_size, self.padding, self.stride, self.implementation)
        return self.proj_drop(self.proj(out))

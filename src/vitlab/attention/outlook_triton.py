"""Triton kernels for fold-free outlook attention (forward and backward).

The per-pixel neighbourhood weights W (see ``outlook.neighbourhood_weights``) are built with a few
strided adds in PyTorch; the aggregation ``Y[p] = sum_o W[o, p] V[p + o]`` and its two gradients run
as fused kernels that read each value (2K-1)^2 times from cache instead of materialising copies:

- forward: one program per (batch, head, block of pixels) accumulates the (2K-1)^2 shifted values;
- grad V: a gather, ``dV[q] = sum_o W[o, q - o] dY[q - o]`` (no atomics);
- grad W: ``dW[o, p] = <dY[p], V[p + o]>`` over the head's channels.

Used on CUDA when Triton imports, after a one-time forward/backward self-check per device and
dtype against the PyTorch path (``outlook._triton_self_check``): "auto" falls back to PyTorch if
it fails. With ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors
(slowly), which is how the tests check them on machines without a GPU.
"""
from __future__ import annotations

import os

import torch

try:  # optional dependency
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the environment
    triton = None
    tl = None


def is_available() -> bool:
    """Triton imports and there is a device to run on (a CUDA GPU, or the CPU interpreter)."""
    if triton is None:
        return False
    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"


if triton is not None:

    @triton.jit
    def _outlook_fwd_kernel(v_ptr, w_ptr, out_ptr, H, W, HEADS, D, HB, WB, OFF, B,
                            FR: tl.constexpr, CENTRE: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_p = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // HEADS
        head = bh % HEADS
        pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        ch = tl.arange(0, BLOCK_D)
        y = pix // W
        x = pix % W
        in_map = pix < H * W
        ch_ok = ch < D
        acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
        for o in tl.static_range(FR * FR):
            dy = o // FR - CENTRE
            dx = o % FR - CENTRE
            yy = y + dy
            xx = x + dx
            ok = in_map & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            w_off = (((o * B + b) * HB + (y + OFF)) * WB + (x + OFF)) * HEADS + head
            wgt = tl.load(w_ptr + w_off, mask=ok, other=0.0).to(tl.float32)
            v_off = (((b * H + yy) * W + xx) * HEADS + head) * D
            val = tl.load(v_ptr + v_off[:, None] + ch[None, :], mask=ok[:, None] & ch_ok[None, :], other=0.0)
            acc += wgt[:, None] * val.to(tl.float32)
        o_off = (((b * H + y) * W + x) * HEADS + head) * D
        tl.store(out_ptr + o_off[:, None] + ch[None, :], acc.to(out_ptr.dtype.element_ty),
                 mask=in_map[:, None] & ch_ok[None, :])

    @triton.jit
    def _outlook_bwd_values_kernel(g_ptr, w_ptr, gv_ptr, H, W, HEADS, D, HB, WB, OFF, B,
                                   FR: tl.constexpr, CENTRE: tl.constexpr, BLOCK_P: tl.constexpr,
                                   BLOCK_D: tl.constexpr):
        pid_p = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // HEADS
        head = bh % HEADS
        pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        ch = tl.arange(0, BLOCK_D)
        qy = pix // W
        qx = pix % W
        in_map = pix < H * W
        ch_ok = ch < D
        acc = tl.zeros((BLOCK_P, BLOCK_D), dtype=tl.float32)
        for o in tl.static_range(FR * FR):
            py = qy - (o // FR - CENTRE)  # the output pixel that read this value through entry o
            px = qx - (o % FR - CENTRE)
            ok = in_map & (py >= 0) & (py < H) & (px >= 0) & (px < W)
            w_off = (((o * B + b) * HB + (py + OFF)) * WB + (px + OFF)) * HEADS + head
            wgt = tl.load(w_ptr + w_off, mask=ok, other=0.0).to(tl.float32)
            g_off = (((b * H + py) * W + px) * HEADS + head) * D
            grad = tl.load(g_ptr + g_off[:, None] + ch[None, :], mask=ok[:, None] & ch_ok[None, :], other=0.0)
            acc += wgt[:, None] * grad.to(tl.float32)
        q_off = (((b * H + qy) * W + qx) * HEADS + head) * D
        tl.store(gv_ptr + q_off[:, None] + ch[None, :], acc.to(gv_ptr.dtype.element_ty),
                 mask=in_map[:, None] & ch_ok[None, :])

    @triton.jit
    def _outlook_bwd_weights_kernel(g_ptr, v_ptr, gw_ptr, H, W, HEADS, D, HB, WB, OFF, B,
                                    FR: tl.constexpr, CENTRE: tl.constexpr, BLOCK_P: tl.constexpr,
                                    BLOCK_D: tl.constexpr):
        pid_p = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // HEADS
        head = bh % HEADS
        pix = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        ch = tl.arange(0, BLOCK_D)
        y = pix // W
        x = pix % W
        in_map = pix < H * W
        ch_ok = ch < D
        g_off = (((b * H + y) * W + x) * HEADS + head) * D
        grad = tl.load(g_ptr + g_off[:, None] + ch[None, :], mask=in_map[:, None] & ch_ok[None, :],
                       other=0.0).to(tl.float32)
        for o in tl.static_range(FR * FR):
            yy = y + (o // FR - CENTRE)
            xx = x + (o % FR - CENTRE)
            ok = in_map & (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            v_off = (((b * H + yy) * W + xx) * HEADS + head) * D
            val = tl.load(v_ptr + v_off[:, None] + ch[None, :], mask=ok[:, None] & ch_ok[None, :], other=0.0)
            dot = tl.sum(grad * val.to(tl.float32), axis=1)
            w_off = (((o * B + b) * HB + (y + OFF)) * WB + (x + OFF)) * HEADS + head
            tl.store(gw_ptr + w_off, dot.to(gw_ptr.dtype.element_ty), mask=in_map)


def _launch(kernel, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor, v_shape, frame_shape, offset: int,
            centre: int) -> None:
    B, H, W, heads, d = v_shape
    Fr = frame_shape[0]
    block_d = triton.next_power_of_2(d)
    block_p = max(16, min(128, 4096 // block_d))
    grid = (triton.cdiv(H * W, block_p), B * heads)
    kernel[grid](a, b, out, H, W, heads, d, frame_shape[3], frame_shape[4], offset, B,
                 FR=Fr, CENTRE=centre, BLOCK_P=block_p, BLOCK_D=block_d)


class _TritonOutlook(torch.autograd.Function):
    @staticmethod
    def forward(v, attn, kernel_size, padding, stride):
        from .outlook import _build_frames, neighbourhood_centre
        v = v.contiguous()
        frames, off = _build_frames(attn, v.shape[1], v.shape[2], kernel_size, padding, stride)
        frames = frames.contiguous()
        out = torch.empty_like(v)
        _launch(_outlook_fwd_kernel, v, frames, out, v.shape, frames.shape, off,
                neighbourhood_centre(kernel_size, padding, stride))
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        v, attn, kernel_size, padding, stride = inputs
        ctx.save_for_backward(v, attn)
        ctx.geometry = (kernel_size, padding, stride)

    @staticmethod
    def backward(ctx, grad_out):
        from .outlook import _build_frames, _frame_slot_views, neighbourhood_centre
        v, attn = ctx.saved_tensors
        kernel_size, padding, stride = ctx.geometry
        v = v.contiguous()
        grad_out = grad_out.contiguous().to(v.dtype)
        H, W = v.shape[1], v.shape[2]
        centre = neighbourhood_centre(kernel_size, padding, stride)
        frames, off = _build_frames(attn, H, W, kernel_size, padding, stride)
        grad_v = grad_attn = None
        if ctx.needs_input_grad[0]:
            grad_v = torch.empty_like(v)
            _launch(_outlook_bwd_values_kernel, grad_out, frames, grad_v, v.shape, frames.shape, off, centre)
        if ctx.needs_input_grad[1]:
            grad_frames = torch.zeros_like(frames)
            del frames
            _launch(_outlook_bwd_weights_kernel, grad_out, v, grad_frames, v.shape, grad_frames.shape, off, centre)
            grad_attn = attn.new_empty(attn.shape)
            for frame, slot in _frame_slot_views(grad_frames, grad_attn, H, W, kernel_size, padding, stride):
                slot.copy_(frame)
        return grad_v, grad_attn, None, None, None


def triton_outlook_attention(v: torch.Tensor, attn: torch.Tensor, kernel_size: int, padding: int,
                             stride: int) -> torch.Tensor:
    """Fold-free outlook aggregation of ``v`` (B, H, W, heads, d) with window weights ``attn`` via Triton."""
    if not is_available():
        raise RuntimeError("the Triton outlook kernel needs `triton` and a CUDA device (or TRITON_INTERPRET=1); "
                           "use implementation='torch' instead")
    return _TritonOutlook.apply(v, attn, kernel_size, padding, stride)

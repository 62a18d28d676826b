"""Fold-free outlook aggregation as a ``torch.library`` custom op with its own backward.

Under ``torch.compile`` with gradients, inductor would otherwise trace the functional form
(``outlook._fold_free_functional``) and derive its backward itself: the gradient of the values is
the backward of an overlapping ``unfold`` view (a scatter-add over the (2K-1)^2 offsets) and AOTAutograd
keeps or recomputes the broadcast neighbourhood product. As an opaque op the compiled graph calls the
same kernels as eager mode (``outlook.fold_free_forward`` / ``fold_free_backward``: K^2 strided adds to
build the weights, one ``addcmul_`` per offset, saving only V and the window weights) and
inductor compiles everything around it. ``torch.library.opcheck`` checks the registration
(``tests/test_compile_training.py``).
"""
from __future__ import annotations

import torch


@torch.library.custom_op("vitlab::outlook_aggregate", mutates_args=())
def outlook_aggregate(v: torch.Tensor, attn: torch.Tensor, kernel_size: int, padding: int,
                      stride: int) -> torch.Tensor:
    """Y (B, H, W, heads, d) from values ``v`` (B, H, W, heads, d) and window weights ``attn``."""
    from .outlook import fold_free_forward
    return fold_free_forward(v.contiguous(), attn.contiguous(), kernel_size, padding, stride)


@outlook_aggregate.register_fake
def _(v, attn, kernel_size, padding, stride):
    return v.new_empty(v.shape)


@torch.library.custom_op("vitlab::outlook_aggregate_backward", mutates_args=())
def outlook_aggregate_backward(grad_out: torch.Tensor, v: torch.Tensor, attn: torch.Tensor, kernel_size: int,
                               padding: int, stride: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad of v, grad of attn) of :func:`outlook_aggregate`."""
    from .outlook import fold_free_backward
    return fold_free_backward(grad_out.contiguous(), v.contiguous(), attn.contiguous(), kernel_size, padding, stride)


@outlook_aggregate_backward.register_fake
def _(grad_out, v, attn, kernel_size, padding, stride):
    return v.new_empty(v.shape), attn.new_empty(attn.shape)


def _setup_context(ctx, inputs, output):
    v, attn, kernel_size, padding, stride = inputs
    ctx.save_for_backward(v, attn)
    ctx.geometry = (kernel_size, padding, stride)


def _backward(ctx, grad_out):
    v, attn = ctx.saved_tensors
    grad_v, grad_attn = outlook_aggregate_backward(grad_out, v, attn, *ctx.geometry)
    return grad_v, grad_attn, None, None, None


outlook_aggregate.register_autograd(_backward, setup_context=_setup_context)

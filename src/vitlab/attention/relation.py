"""UniFormer's multi-head relation aggregators (MHRA; Li et al., arXiv 2201.09450, Sec. 3.2).

MHRA(X) = Concat_n(A_n V_n(X)) U, with the affinity A_n either

* **local** (Eq. 5-6, shallow stages): a learnable, token-independent affinity inside a small
  neighbourhood. With V and U as 1x1 convolutions and A as a depth-wise kxk (or kxkxk for video)
  convolution, local MHRA is ``conv2(dwconv(conv1(x)))`` (:func:`local_relation`);
* **global** (Eq. 7, deep stages): softmax(Q K^T / sqrt(d)) over all tokens of the stage, i.e.
  multi-head self-attention (:class:`GlobalMHRA`), computed with fused
  ``scaled_dot_product_attention``. For video the tokens are all T*H*W positions (joint
  spatio-temporal attention).

For dense prediction at high resolution the deep-stage attention can be restricted to
non-overlapping windows (:class:`WindowMHRA`, the detection/segmentation "window" and "hybrid"
settings of the paper, Sec. 4.3-4.4, window 14).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.attention.global_ import Attention


def local_relation(x: torch.Tensor, value: nn.Module, affinity: nn.Module, proj: nn.Module) -> torch.Tensor:
    """Local MHRA (Eq. 5-6): ``proj(affinity(value(x)))`` with a depth-wise conv as the affinity.

    Works on NCHW (image) and NCTHW (video) maps alike; the modules decide the dimensionality.
    """
    return proj(affinity(value(x)))


def make_local_relation(dim: int, dims: int = 2, kernel_size: int = 5) -> tuple[nn.Module, nn.Module, nn.Module]:
    """The three convolutions of a local MHRA: 1x1 value, depth-wise kxk affinity, 1x1 projection.

    Returned separately so that a block can own them under the official names ``conv1``/``attn``/``conv2``.
    """
    if dims not in (2, 3):
        raise ValueError(f"local MHRA supports 2-D (image) or 3-D (video) maps, got dims={dims}")
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return (conv(dim, dim, 1), conv(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim),
            conv(dim, dim, 1))


class GlobalMHRA(Attention):
    """Global MHRA (Eq. 7): multi-head self-attention over all tokens of a (B, N, C) sequence.

    Keys ``qkv``/``proj`` as in the official code. ``num_heads = dim // head_dim``.
    """


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """(B, H, W, C) -> (B * nW, ws*ws, C), zero-padding H and W at the bottom/right to a multiple of ``ws``.

    Returns the windows and the padded size (Hp, Wp) needed by :func:`window_merge`.
    """
    B, H, W, C = x.shape
    pad_b, pad_r = (-H) % window_size, (-W) % window_size
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    Hp, Wp = H + pad_b, W + pad_r
    x = x.view(B, Hp // window_size, window_size, Wp // window_size, window_size, C)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, C), (Hp, Wp)


def window_merge(windows: torch.Tensor, window_size: int, batch: int, padded_hw: tuple[int, int],
                 hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws*ws, C) -> (B, H, W, C), cropping the padding."""
    Hp, Wp = padded_hw
    C = windows.shape[-1]
    x = windows.view(batch, Hp // window_size, Wp // window_size, window_size, window_size, C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(batch, Hp, Wp, C)
    return x[:, :hw[0], :hw[1]]


class WindowMHRA(Attention):
    """Global MHRA restricted to non-overlapping ``window_size`` x ``window_size`` windows.

    Takes (B, H, W, C) tokens. As in the official dense backbones, the (already normalised)
    tokens are zero-padded to a multiple of the window and the padded positions take part in
    attention without a mask; outputs at padded positions are discarded.
    """

    def __init__(self, dim: int, num_heads: int = 8, window_size: int = 14, **kwargs):
        super().__init__(dim, num_heads, **kwargs)
        if window_size < 1:
            raise ValueError(f"window_size must be positive, got {window_size}")
        self.window_size = window_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"WindowMHRA expects (B, H, W, C) tokens, got shape {tuple(x.shape)}")
        B, H, W, _ = x.shape
        windows, padded = window_partition(x, self.window_size)
        out = super().forward(windows)
        return window_merge(out, self.window_size, B, padded, (H, W))

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}"

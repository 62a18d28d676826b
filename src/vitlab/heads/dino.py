"""DINO projection head (Caron et al., arXiv 2104.14294, Sec. 3.1 / App. C), used by EsViT
(arXiv 2106.09785) twice: on the pooled view feature (``head``) and on every region token
(``head_dense``).

MLP (Linear-GELU x (nlayers-1), then Linear to ``bottleneck_dim``) -> L2 normalisation ->
weight-normalised Linear(bottleneck, out_dim, bias=False). The last layer keeps the legacy
``torch.nn.utils.weight_norm`` parameter names ``weight_g`` (out, 1) and ``weight_v`` (out, in),
weight = g * v / ||v|| row-wise, so official checkpoints load unchanged. With
``norm_last_layer=True`` the magnitude g is fixed to 1 (not trained), as in DINO.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.layers import init_weights_trunc_normal


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight = g * v / ||v|| (row-wise), parameters ``weight_g`` and ``weight_v``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        v = nn.Linear(in_features, out_features, bias=False).weight.detach()
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))  # g first: the legacy key order
        self.weight_v = nn.Parameter(v.clone())

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.weight_v.shape[1]}, out_features={self.weight_v.shape[0]}"


class DINOHead(nn.Module):
    """The DINO head with the official constructor arguments (keys ``mlp.*``, ``last_layer.weight_{g,v}``)."""

    def __init__(self, in_dim: int, out_dim: int, use_bn: bool = False, norm_last_layer: bool = True,
                 nlayers: int = 3, hidden_dim: int = 2048, bottleneck_dim: int = 256):
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
            for _ in range(nlayers - 2):
                layers.append(nn.Linear(hidden_dim, hidden_dim))
                if use_bn:
                    layers.append(nn.BatchNorm1d(hidden_dim))
                layers.append(nn.GELU())
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
            self.mlp = nn.Sequential(*layers)
        self.apply(init_weights_trunc_normal)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        self.norm_last_layer = norm_last_layer
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, p=2)
        return self.last_layer(x)


def cancel_last_layer_gradients(head: nn.Module) -> None:
    """Drop the gradients of every ``last_layer`` parameter (DINO freezes it for the first epoch)."""
    for name, p in head.named_parameters():
        if "last_layer" in name:
            p.grad = None

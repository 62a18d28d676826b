"""Weight initialisation used by the ViT family of models."""
import math

import torch
from torch import nn


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    """Fill ``tensor`` from N(mean, std) truncated to [a, b] (absolute bounds, like timm)."""
    with torch.no_grad():
        return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def init_weights_trunc_normal(module: nn.Module, std: float = 0.02) -> None:
    """ViT-style init: truncated-normal Linear weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def init_conv_fan_out(module: nn.Module) -> None:
    """He-style init by fan-out for convolutions (used by convolutional stems and heads)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        fan_out = math.prod(module.kernel_size) * module.out_channels // module.groups
        module.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            module.bias.data.zero_()

"""Deconvolution heatmap head of SimpleBaseline (Xiao et al., "Simple Baselines for Human Pose
Estimation and Tracking", ECCV 2018), as mmpose 0.x's ``TopdownHeatmapSimpleHead`` (formerly
``TopDownSimpleHead``), the head of the official UniFormer pose configs.

``num_deconv_layers`` x [ConvTranspose2d(stride 2, no bias) -> BatchNorm2d -> ReLU] upsample the
backbone's last map (stride 32 -> 4 with three layers), then a ``final_conv_kernel`` convolution
(1: 1x1, 3: 3x3, 0: none) gives one heatmap per keypoint. Parameter names are mmpose's
(``deconv_layers.{0,3,6}.weight``, ``deconv_layers.{1,4,7}.*`` BatchNorm, ``final_layer.*``), so an
mmpose checkpoint's ``keypoint_head.*`` keys load directly. Initialisation as mmpose: deconvolutions
N(0, 0.001), BatchNorm weight 1 / bias 0, final convolution N(0, 0.001) with bias 0.
"""
from __future__ import annotations

import torch
from torch import nn

_DECONV_CFG = {4: (1, 0), 3: (1, 1), 2: (0, 0)}  # kernel -> (padding, output_padding): exact x2 upsampling


class TopdownHeatmapSimpleHead(nn.Module):
    """Backbone map (B, in_channels, h, w) -> heatmaps (B, out_channels, h * 2**num_deconv_layers, ...)."""

    def __init__(self, in_channels: int, out_channels: int = 17, num_deconv_layers: int = 3,
                 num_deconv_filters=(256, 256, 256), num_deconv_kernels=(4, 4, 4), final_conv_kernel: int = 1):
        super().__init__()
        if num_deconv_layers < 0:
            raise ValueError(f"num_deconv_layers must be >= 0, got {num_deconv_layers}")
        if num_deconv_layers and (len(num_deconv_filters) != num_deconv_layers
                                  or len(num_deconv_kernels) != num_deconv_layers):
            raise ValueError(f"num_deconv_layers={num_deconv_layers} needs as many filters and kernels, got "
                             f"{list(num_deconv_filters)} and {list(num_deconv_kernels)}")
        if final_conv_kernel not in (0, 1, 3):
            raise ValueError(f"final_conv_kernel must be 0 (none), 1 or 3, got {final_conv_kernel}")
        self.in_channels, self.out_channels = in_channels, out_channels
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(num_deconv_layers):
            k = num_deconv_kernels[i]
            if k not in _DECONV_CFG:
                raise ValueError(f"deconvolution kernels must be 2, 3 or 4, got {k}")
            padding, output_padding = _DECONV_CFG[k]
            layers += [nn.ConvTranspose2d(channels, num_deconv_filters[i], k, stride=2, padding=padding,
                                          output_padding=output_padding, bias=False),
                       nn.BatchNorm2d(num_deconv_filters[i]), nn.ReLU(inplace=True)]
            channels = num_deconv_filters[i]
        self.deconv_layers = nn.Sequential(*layers) if layers else nn.Identity()
        if final_conv_kernel == 0:
            if channels != out_channels:
                raise ValueError(f"final_conv_kernel=0 (no final conv) needs {out_channels} channels, got {channels}")
            self.final_layer = nn.Identity()
        else:
            self.final_layer = nn.Conv2d(channels, out_channels, final_conv_kernel, padding=final_conv_kernel // 2)
        self.upsample = 2 ** num_deconv_layers
        self.init_weights()

    def init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.ConvTranspose2d):
                nn.init.normal_(m.weight, std=0.001)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(x, (list, tuple)):  # a list of backbone maps: the head reads the last one
            x = x[-1]
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"the heatmap head expects (B, {self.in_channels}, h, w) features, got {tuple(x.shape)}")
        return self.final_layer(self.deconv_layers(x))


TopDownSimpleHead = TopdownHeatmapSimpleHead  # the name in mmpose <= 0.13 and the official UniFormer configs

"""Feature Pyramid Network neck (Lin et al., arXiv 1612.03144) in mmdetection 2.x's ``FPN`` layout.

1x1 lateral convs bring the backbone maps ``in_channels[start_level:end_level]`` (fine -> coarse) to
``out_channels``; a top-down pass adds each coarser lateral, nearest-upsampled to the finer size; a
3x3 conv smooths every level. With ``num_outs`` above the number of inputs and
``add_extra_convs=False`` the extra levels are ``max_pool2d(kernel 1, stride 2)`` of the last output
(P6 of Mask R-CNN). ``top_down=False`` drops the top-down additions (ViTDet's simple pyramid, mmdet's
``SimFPN``). Keys: ``lateral_convs.i.conv``, ``fpn_convs.i.conv`` (+ ``.bn``/``.gn``/``.ln`` with a norm),
``fpn_convs.{n..}.conv`` for extra convs. Convs are Xavier-uniform initialised, biases zero (mmdet).

:class:`ConvModule` is mmcv's conv -> norm -> activation with its key names, used by every detection head.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vitlab.layers.norm import LayerNorm2d

_NORMS = {"BN": ("bn", nn.BatchNorm2d), "SyncBN": ("bn", nn.BatchNorm2d), "BN2d": ("bn", nn.BatchNorm2d),
          "GN": ("gn", None), "LN": ("ln", LayerNorm2d), "LN2d": ("ln", LayerNorm2d)}


def build_norm(norm_cfg: dict, channels: int) -> tuple[str, nn.Module]:
    """(mmcv's attribute name, module) for ``norm_cfg`` = dict(type='BN'|'SyncBN'|'GN'|'LN', ...).

    ``SyncBN`` builds a plain ``BatchNorm2d`` (same keys); convert with ``nn.SyncBatchNorm.convert_sync_batchnorm``
    for multi-process training.
    """
    cfg = dict(norm_cfg)
    kind = cfg.pop("type")
    if kind not in _NORMS:
        raise ValueError(f"unknown norm type {kind!r}; expected one of {sorted(_NORMS)}")
    requires_grad = cfg.pop("requires_grad", True)
    name, cls = _NORMS[kind]
    if kind == "GN":
        module = nn.GroupNorm(cfg.pop("num_groups"), channels, **cfg)
    else:
        module = cls(channels, **cfg)
    for p in module.parameters():
        p.requires_grad = requires_grad
    return name, module


class ConvModule(nn.Module):
    """mmcv's ``ConvModule``: ``conv`` (bias only without a norm) -> optional norm (``bn``/``gn``/``ln``) ->
    optional ReLU; Kaiming-normal (fan_out) initialisation of the conv as mmcv's default."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 norm_cfg: dict | None = None, act: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=norm_cfg is None)
        self.norm_name = None
        if norm_cfg is not None:
            self.norm_name, norm = build_norm(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        self.activate = nn.ReLU(inplace=True) if act else None
        nn.init.kaiming_normal_(self.conv.weight, mode="fan_out", nonlinearity="relu")
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        return self.activate(x) if self.activate is not None else x


class FPN(nn.Module):
    """mmdet's ``FPN(in_channels, out_channels, num_outs, start_level=0, end_level=-1, add_extra_convs=False,
    relu_before_extra_convs=False, no_norm_on_lateral=False, norm_cfg=None, upsample_cfg=dict(mode='nearest'))``
    plus ``top_down`` (False: ViTDet's ``SimFPN``). ``forward(list of maps) -> tuple of num_outs maps``."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, *, start_level: int = 0,
                 end_level: int = -1, add_extra_convs: bool | str = False, relu_before_extra_convs: bool = False,
                 no_norm_on_lateral: bool = False, norm_cfg: dict | None = None, upsample_cfg: dict | None = None,
                 top_down: bool = True, type=None):
        super().__init__()
        if type not in (None, "FPN", "SimFPN"):
            raise ValueError(f"FPN got type={type!r}; expected 'FPN' or 'SimFPN'")
        top_down = top_down and type != "SimFPN"
        self.in_channels, self.out_channels, self.num_ins = list(in_channels), out_channels, len(in_channels)
        self.num_outs, self.top_down = num_outs, top_down
        self.relu_before_extra_convs = relu_before_extra_convs
        self.upsample_cfg = dict(upsample_cfg or {"mode": "nearest"})
        self.backbone_end_level = self.num_ins if end_level == -1 else end_level
        if not 0 <= start_level < self.backbone_end_level <= self.num_ins:
            raise ValueError(f"FPN levels [{start_level}, {end_level}) do not fit {self.num_ins} inputs")
        if end_level != -1 and num_outs != end_level - start_level:
            raise ValueError("with an explicit end_level, num_outs must equal end_level - start_level")
        if num_outs < self.backbone_end_level - start_level:
            raise ValueError(f"num_outs={num_outs} is fewer than the {self.backbone_end_level - start_level} "
                             f"levels used")
        self.start_level, self.end_level = start_level, end_level
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs not in (False, "on_input", "on_lateral", "on_output"):
            raise ValueError(f"add_extra_convs must be False, True, 'on_input', 'on_lateral' or 'on_output', "
                             f"got {add_extra_convs!r}")
        self.add_extra_convs = add_extra_convs

        self.lateral_convs, self.fpn_convs = nn.ModuleList(), nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(ConvModule(self.in_channels[i], out_channels, 1,
                                                 norm_cfg=None if no_norm_on_lateral else norm_cfg, act=False))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act=False))
        extra = num_outs - self.backbone_end_level + start_level
        if add_extra_convs and extra > 0:
            for i in range(extra):
                cin = self.in_channels[self.backbone_end_level - 1] if i == 0 and add_extra_convs == "on_input" \
                    else out_channels
                self.fpn_convs.append(ConvModule(cin, out_channels, 3, stride=2, padding=1, norm_cfg=norm_cfg,
                                                 act=False))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != self.num_ins:
            raise ValueError(f"FPN was built for {self.num_ins} maps (channels {self.in_channels}), got {len(inputs)}")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        if self.top_down:
            for i in range(len(laterals) - 1, 0, -1):
                up = F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], **self.upsample_cfg) \
                    if "scale_factor" not in self.upsample_cfg else F.interpolate(laterals[i], **self.upsample_cfg)
                laterals[i - 1] = laterals[i - 1] + up
        used = len(laterals)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.num_outs > used:
            if not self.add_extra_convs:
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {"on_input": inputs[self.backbone_end_level - 1], "on_lateral": laterals[-1],
                          "on_output": outs[-1]}[self.add_extra_convs]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, self.num_outs):
                    outs.append(self.fpn_convs[i](F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]))
        return tuple(outs)

"""Feed-forward blocks: token MLP (fc1 -> act -> fc2) and its 1x1-convolution twin."""
from torch import nn


class Mlp(nn.Module):
    """Two-layer MLP over the last dimension, the FFN of a transformer block.

    State-dict keys ``fc1``/``fc2`` match the official VOLO, UniFormer, Swin and ViT code.
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0, bias: bool = True):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class ConvMlp(nn.Module):
    """The same FFN as 1x1 convolutions on NCHW (or NCTHW with ``dims=3``) maps."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer=nn.GELU, drop: float = 0.0, dims: int = 2):
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = conv(in_features, hidden_features, 1)
        self.act = act_layer()
        self.fc2 = conv(hidden_features, out_features, 1)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))

"""Reusable building blocks shared by every model family."""
from .drop import DropPath, drop_path
from .init import trunc_normal_, init_weights_trunc_normal
from .mlp import Mlp, ConvMlp
from .norm import LayerNorm2d, FrozenBatchNorm2d, freeze_batch_norm
from .pos_embed import resize_pos_embed_nhwc, resize_pos_embed_tokens

__all__ = [
    "DropPath", "drop_path", "trunc_normal_", "init_weights_trunc_normal", "Mlp", "ConvMlp",
    "LayerNorm2d", "FrozenBatchNorm2d", "freeze_batch_norm", "resize_pos_embed_nhwc", "resize_pos_embed_tokens",
]

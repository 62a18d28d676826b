"""vitlab: VOLO, Pale Transformer, UniFormer, SegViT and EsViT in one PyTorch package."""
from .models.registry import create_model, list_models, register_family, register_model
from .checkpoints.load import load_checkpoint, CheckpointError, LoadReport
from .checkpoints.hub import from_pretrained, save_pretrained

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "register_family", "register_model", "load_checkpoint",
           "CheckpointError", "LoadReport", "from_pretrained", "save_pretrained", "__version__"]

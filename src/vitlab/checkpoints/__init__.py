"""Reading, remapping and writing weights: official checkpoints, model folders, atomic files."""
from .load import CheckpointError, LoadReport, load_checkpoint, read_state_dict, unwrap_state_dict
from .hub import from_pretrained, save_pretrained

__all__ = ["CheckpointError", "LoadReport", "load_checkpoint", "read_state_dict", "unwrap_state_dict",
           "from_pretrained", "save_pretrained"]

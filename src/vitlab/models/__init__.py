"""Backbones. Each module registers its family and variants with :mod:`vitlab.models.registry`."""
from .base import TrainOutput, VitlabModel
from .registry import create_model, list_models, register_family, register_model, get_entry

__all__ = ["create_model", "list_models", "register_family", "register_model", "get_entry", "TrainOutput",
           "VitlabModel"]

"""``create_model(name, features_only=True, out_indices=...)``: a backbone that returns its feature maps.

Like timm's ``FeatureGetterNet``, :class:`FeatureExtractor` wraps a model and calls its
``forward_intermediates``: ``forward(x)`` is a list of maps, shallow to deep, NCHW (NCTHW for video
models), one per selected index. ``feature_info`` is a :class:`~vitlab.models.features.FeatureInfo`
(``channels()``, ``reduction()``, ``module_name()`` of the selected maps). The wrapped model keeps
its parameters under ``model.`` (as in timm); checkpoints of the plain backbone load into it with
``vitlab.load_checkpoint`` (keys gain the prefix, classifier weights are left out).
"""
from __future__ import annotations

import torch
from torch import nn

from vitlab.models.features import FeatureInfo

# pretrained_cfg entries that describe a classifier, not the backbone (timm drops the same ones)
CLASSIFIER_CFG_KEYS = ("num_classes", "classifier", "global_pool")


class FeatureExtractor(nn.Module):
    """A vitlab backbone whose ``forward`` returns the feature maps at ``out_indices`` (default: all)."""

    def __init__(self, model: nn.Module, out_indices=None):
        super().__init__()
        info = getattr(model, "feature_info", None)
        if not callable(getattr(model, "forward_intermediates", None)) or not info:
            raise ValueError(f"{getattr(model, 'model_name', type(model).__name__)} has no feature maps to return "
                             f"(it lacks forward_intermediates / feature_info)")
        try:
            self.feature_info = FeatureInfo(info, out_indices)
        except (TypeError, ValueError) as e:
            name = getattr(model, "model_name", type(model).__name__)
            raise type(e)(f"out_indices={out_indices!r} for {name}: {e}") from None
        self.out_indices = self.feature_info.out_indices
        self.model = model
        self.model_name = getattr(model, "model_name", None)
        self.pretrained_cfg = {k: v for k, v in getattr(model, "pretrained_cfg", {}).items()
                               if k not in CLASSIFIER_CFG_KEYS}

    @property
    def default_cfg(self) -> dict:  # timm's older name
        return self.pretrained_cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.model.forward_intermediates(x, indices=list(self.out_indices))

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.model.set_grad_checkpointing(enable)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        inner = getattr(self.model, "no_weight_decay", None)
        return {f"model.{n}" for n in inner()} if callable(inner) else set()

    def checkpoint_filter(self, state_dict: dict, notes: list[str]) -> dict:
        """Load a plain backbone checkpoint: apply the backbone's own remapping, leave out its classifier
        (this model has none) and prefix the keys with ``model.``. Keys that already carry the prefix
        (a saved feature extractor) pass unchanged."""
        if any(k.startswith("model.") for k in state_dict):
            return state_dict
        if hasattr(self.model, "checkpoint_filter"):
            state_dict = self.model.checkpoint_filter(state_dict, notes)
        own = self.model.state_dict()
        names = getattr(self.model, "classifier_names", ("head", "aux_head"))
        dropped = sorted(k for k in state_dict if k not in own and k.split(".")[0] in names)
        if dropped:
            notes.append(f"left out the classifier ({', '.join(dropped)}): a features_only model has none")
        return {f"model.{k}": v for k, v in state_dict.items() if k not in dropped}

"""Loading a checkpoint whose classifier has another number of classes, as timm does for
``create_model(name, pretrained=PATH, num_classes=K)``: the head starts fresh, everything else is strict."""
from __future__ import annotations

import logging

import torch
from torch import nn

_logger = logging.getLogger(__name__)

def _classifier_tensors(model: nn.Module, state_dict: dict) -> tuple[list[str], dict[str, torch.Tensor]]:
    """The model's classifier modules and the checkpoint's Linear classifier tensors for them."""
    names = [n for n in getattr(model, "classifier_names", ("head", "aux_head"))
             if isinstance(getattr(model, n, None), nn.Module)]
    found = {}
    for n in names:
        weight = state_dict.get(f"{n}.weight")
        if weight is not None and weight.ndim == 2:
            found[f"{n}.weight"] = weight
            if f"{n}.bias" in state_dict:
                found[f"{n}.bias"] = state_dict[f"{n}.bias"]
    return names, found


def load_pretrained(model: nn.Module, path, adapt_classifier: bool = False):
    """Load ``path`` strictly; with ``adapt_classifier`` a checkpoint classifier for another number of
    classes is left out and the model's own (freshly initialised) one kept, as timm does when
    ``num_classes`` differs. Every other weight still loads strictly (a mismatch raises CheckpointError).
    Returns the :class:`~vitlab.checkpoints.load.LoadReport`."""
    from vitlab.checkpoints.load import CheckpointError, load_checkpoint
    if not adapt_classifier:
        return load_checkpoint(model, path, strict=True)
    try:
        return _load_adapting_classifier(model, path)
    except CheckpointError as e:   # name the file, not the dict it was read into
        raise CheckpointError(str(e).replace("checkpoint <state dict>", f"checkpoint {path}", 1)) from None


def _load_adapting_classifier(model: nn.Module, path):
    from vitlab.checkpoints.load import load_checkpoint, read_checkpoint_object, strip_prefixes, unwrap_state_dict
    state_dict, wrapper = unwrap_state_dict(read_checkpoint_object(path))
    state_dict = strip_prefixes(dict(state_dict), set(model.state_dict()), [])
    names, ckpt_head = _classifier_tensors(model, state_dict)
    own_head = {k: v for k, v in model.state_dict().items() if k.endswith(".weight") and k.split(".")[0] in names}
    ckpt_classes = {v.shape[0] for k, v in ckpt_head.items() if k.endswith(".weight")}
    own_classes = {v.shape[0] for v in own_head.values() if v.ndim == 2} or {0}
    if ckpt_classes == own_classes or (not ckpt_head and own_classes == {0}):
        report = load_checkpoint(model, state_dict, strict=True)
    else:  # timm drops the checkpoint's classifier when num_classes differs and keeps the model's own
        rest = {k: v for k, v in state_dict.items() if k not in ckpt_head}
        report = load_checkpoint(model, rest, strict=True, drop_classifier=True)
        model_name = getattr(model, "model_name", type(model).__name__)
        k = getattr(model, "num_classes", min(own_classes))
        ckpt_k = "/".join(str(c) for c in sorted(ckpt_classes))
        if k:
            reinit = ", ".join(key for key in model.state_dict() if key.split(".")[0] in names)
            had = f"the checkpoint's classifier has {ckpt_k} classes" if ckpt_head else \
                "the checkpoint has no classifier"
            line = (f"{model_name}: {had}, the model {k}: re-initialised {reinit}; every other weight loaded "
                    f"from {path}")
            _logger.warning(line)
        else:
            line = (f"{model_name}: num_classes=0, left out the checkpoint's {ckpt_k}-class classifier "
                    f"({', '.join(sorted(ckpt_head))}); every other weight loaded from {path}")
            _logger.info(line)
        report.notes.append(line)
    report.source, report.wrapper = str(path), wrapper
    return report

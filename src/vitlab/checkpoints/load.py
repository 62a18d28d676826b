"""Load official and vitlab checkpoints into vitlab models.

``load_checkpoint`` reads ``.pth``/``.pth.tar``/``.pt``/``.bin``/``.safetensors`` files and model
folders, unwraps the containers official releases use (``state_dict``, ``state_dict_ema``,
``model``, ``model_state``, ``teacher``, ``student``, ``module.``/``backbone.`` prefixes), lets
the model remap the official key layout (``model.checkpoint_filter``: position-embedding resize,
2-D -> 3-D inflation, ...), and loads. It never executes pickled code: ``.pth`` files are read
with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

WEIGHT_FILE_NAMES = ("model.safetensors", "pytorch_model.bin", "model.pth", "checkpoint.pth", "last.pth")
WRAPPER_KEYS = ("state_dict", "model", "model_state", "teacher", "student", "module")
TENSOR_SUFFIXES = (".safetensors", ".pth", ".pth.tar", ".pt", ".bin", ".ckpt", ".tar")


class CheckpointError(RuntimeError):
    """A checkpoint could not be read or does not fit the model; the message says what was expected."""


@dataclass
class LoadReport:
    """What ``load_checkpoint`` did: the keys that did not match and every adaptation it made."""
    source: str
    wrapper: str | None = None
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        lines = [f"loaded {self.source}" + (f" (from '{self.wrapper}')" if self.wrapper else "")]
        lines += [f"  note: {n}" for n in self.notes]
        if self.missing:
            lines.append(f"  missing ({len(self.missing)}): {_abbrev(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected ({len(self.unexpected)}): {_abbrev(self.unexpected)}")
        return "\n".join(lines)


def _abbrev(keys: list[str], n: int = 8) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f", ... (+{len(keys) - n} more)" if len(keys) > n else "")


# --- reading -----------------------------------------------------------------------------------

def _resolve_file(path: Path) -> Path:
    if path.is_dir():
        for name in WEIGHT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a folder without weights: expected one of {', '.join(WEIGHT_FILE_NAMES)}")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


def read_checkpoint_object(path: str | os.PathLike):
    """Read a checkpoint file (or model folder) into Python objects without running pickled code."""
    file = _resolve_file(Path(path))
    if file.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(file), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{file} is not a readable safetensors file ({e})") from e
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{file} contains pickled Python objects beyond tensors and plain containers. vitlab reads "
            f"checkpoints with torch.load(weights_only=True) and never executes pickled code. If you trust "
            f"the file, re-save only its tensors, e.g. torch.save(obj['state_dict'], 'weights.pth'), or "
            f"convert it to .safetensors. ({str(e).splitlines()[0]})") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{file} is not a readable PyTorch checkpoint (truncated or corrupt?): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def unwrap_state_dict(obj, use_ema: bool = False, prefer: str | None = None) -> tuple[dict[str, torch.Tensor], str | None]:
    """Find the tensor dict inside an official checkpoint container; returns (state_dict, wrapper key)."""
    wrapper = None
    order = list(WRAPPER_KEYS)
    if use_ema:
        order.insert(0, "state_dict_ema")
    if prefer:
        order.insert(0, prefer)
    for _ in range(3):  # containers nest at most a couple of levels (e.g. {'model': {'state_dict': ...}})
        if not isinstance(obj, dict) or all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        key = next((k for k in order if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj, wrapper = obj[key], key if wrapper is None else f"{wrapper}.{key}"
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of tensors, found {type(obj).__name__}")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"no tensors found; top-level keys are {_abbrev(sorted(map(str, obj)))}")
    return tensors, wrapper


def read_state_dict(path: str | os.PathLike, use_ema: bool = False, prefer: str | None = None) -> dict[str, torch.Tensor]:
    """Read and unwrap a checkpoint into a flat ``{key: tensor}`` dict."""
    return unwrap_state_dict(read_checkpoint_object(path), use_ema=use_ema, prefer=prefer)[0]


# --- adapting -----------------------------------------------------------------------------------

def strip_prefixes(state_dict: dict, model_keys: set[str], notes: list[str]) -> dict:
    """Remove DDP's ``module.`` and mmseg's ``backbone.`` prefixes when the model does not use them."""
    for prefix in ("module.", "backbone.", "encoder."):
        if any(k.startswith(prefix) for k in model_keys):
            continue
        with_prefix = [k for k in state_dict if k.startswith(prefix)]
        if not with_prefix:
            continue
        if len(with_prefix) == len(state_dict):
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
            notes.append(f"stripped prefix '{prefix}'")
        elif prefix == "backbone.":
            dropped = sorted({k.split(".")[0] for k in state_dict if not k.startswith(prefix)})
            state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
            notes.append(f"kept 'backbone.' weights only; ignored {', '.join(p + '.*' for p in dropped)}")
    return state_dict


def classifier_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classification head(s) (``head``, ``aux_head``)."""
    names = getattr(model, "classifier_names", ("head", "aux_head"))
    return [k for k in model.state_dict() if k.split(".")[0] in names]


def suggest_variant(model: nn.Module, state_dict: dict) -> str | None:
    """Name the registered variant of the model's family whose shapes fit ``state_dict`` best."""
    from vitlab.models.registry import build_without_weights, get_entry, list_models
    name = getattr(model, "model_name", None)
    if not name:
        return None
    family = get_entry(name).family
    best, best_score = None, -1.0
    for variant in list_models(family=family):
        try:
            candidate = build_without_weights(variant)
        except Exception:  # a variant that cannot be built bare is simply not suggested
            continue
        shapes = {k: tuple(v.shape) for k, v in candidate.state_dict().items()}
        ckpt = {k: tuple(v.shape) for k, v in state_dict.items()}
        common = set(shapes) & set(ckpt)
        if not common:
            continue
        agree = sum(shapes[k] == ckpt[k] for k in common)
        score = agree / max(len(shapes), len(ckpt))
        if score > best_score:
            best, best_score = variant, score
    return best if best_score > 0.5 else None


def load_checkpoint(model: nn.Module, path_or_state, strict: bool = True, use_ema: bool = False,
                    drop_classifier: bool = False, prefer: str | None = None) -> LoadReport:
    """Load weights into ``model`` and return a :class:`LoadReport`.

    ``path_or_state`` is a file, a model folder or an already-read state dict. ``use_ema`` picks
    ``state_dict_ema`` when present; ``drop_classifier`` skips the classification head(s) (for
    fine-tuning on another number of classes). With ``strict=True`` any missing or unexpected key,
    or any shape mismatch, raises :class:`CheckpointError` naming them.
    """
    if isinstance(path_or_state, dict):
        report = LoadReport(source="<state dict>")
        state_dict, report.wrapper = unwrap_state_dict(path_or_state, use_ema=use_ema, prefer=prefer)
    else:
        report = LoadReport(source=str(path_or_state))
        state_dict, report.wrapper = unwrap_state_dict(read_checkpoint_object(path_or_state), use_ema, prefer)

    model_sd = model.state_dict()
    state_dict = strip_prefixes(dict(state_dict), set(model_sd), report.notes)
    if hasattr(model, "checkpoint_filter"):
        state_dict = model.checkpoint_filter(state_dict, report.notes)
    if drop_classifier:
        heads = set(classifier_keys(model))
        state_dict = {k: v for k, v in state_dict.items() if k not in heads}
        report.notes.append(f"classifier not loaded ({', '.join(sorted(heads)) or 'none'})")

    wrong_shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(model_sd[k].shape)}"
                   for k, v in state_dict.items() if k in model_sd and v.shape != model_sd[k].shape]
    report.missing = [k for k in model_sd if k not in state_dict
                      and not (drop_classifier and k in classifier_keys(model))]
    report.unexpected = [k for k in state_dict if k not in model_sd]
    if wrong_shape or (strict and not report.ok):
        raise CheckpointError(_mismatch_message(model, report, wrong_shape, state_dict))
    model.load_state_dict(state_dict, strict=False)
    return report


def _mismatch_message(model, report: LoadReport, wrong_shape: list[str], state_dict: dict) -> str:
    name = getattr(model, "model_name", type(model).__name__)
    parts = [f"checkpoint {report.source} does not fit model '{name}':"]
    if wrong_shape:
        parts.append(f"  wrong shapes ({len(wrong_shape)}): {_abbrev(wrong_shape, 6)}")
    if report.missing:
        parts.append(f"  missing keys ({len(report.missing)}): {_abbrev(report.missing)}")
    if report.unexpected:
        parts.append(f"  unexpected keys ({len(report.unexpected)}): {_abbrev(report.unexpected)}")
    heads = set(classifier_keys(model))
    if wrong_shape and all(s.split(":")[0] in heads for s in wrong_shape):
        n_ckpt = state_dict[next(iter(heads & set(state_dict)))].shape[0]
        parts.append(f"  the checkpoint has {n_ckpt} classes: build with num_classes={n_ckpt}, "
                     f"or pass drop_classifier=True to fine-tune a new head")
    else:
        guess = suggest_variant(model, state_dict)
        if guess and guess != name:
            parts.append(f"  the checkpoint's shapes match variant '{guess}'")
    return "\n".join(parts)

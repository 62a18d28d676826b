"""TorchScript export by tracing (``torch.jit.trace``), for runtimes that load ``.pt`` TorchScript files.

Tracing records the operators run on the example input; Python control flow is frozen to the
path taken, which is what an eval-mode vitlab model needs. Failures name the operator involved.
The file is written to a temporary file next to the target and renamed onto it once saved, so a
failed export leaves no file behind.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch
from torch import nn

from vitlab.checkpoints.atomic import atomic_path
from vitlab.errors import VitlabError

from .onnx import ExportError, describe_operator, operators_in_error


def export_torchscript(model: nn.Module, inputs: tuple, path: str | Path) -> Path:
    """Trace ``model`` (in eval mode) on ``inputs`` and save the TorchScript module to ``path``."""
    path = Path(path)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, inputs, check_trace=False, strict=False)
            with atomic_path(path) as tmp:
                traced.save(str(tmp))
    except VitlabError:  # a file that cannot be written says so itself
        raise
    except Exception as e:  # noqa: BLE001 - re-raised with the operator named
        name = getattr(model, "model_name", type(model).__name__)
        function = re.search(r"Python function call '(\w+)'", str(e))
        if function:
            raise ExportError(f"TorchScript cannot express {name}: operator prim::PythonOp ({function.group(1)}, a "
                              f"Python autograd.Function) cannot be saved in a TorchScript file; export it with "
                              f"--format onnx instead") from e
        ops = operators_in_error(e)
        which = f" at operator {', '.join(describe_operator(o) for o in ops[:3])}" if ops else ""
        raise ExportError(f"TorchScript cannot express {name}{which}: {str(e).strip().splitlines()[0][:400]}") from e
    finally:
        model.train(was_training)
    return path


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path), map_location="cpu").eval()

"""Numerical parity with the official implementations (data in $VITLAB_FIXTURES).

Every fixture folder is one test, named after the folder. It is dispatched on ``config.json``'s
``family`` to a runner in ``tests/parity_runners/`` that builds the vitlab model from the official
kwargs, loads ``weights.safetensors`` through ``vitlab.load_checkpoint`` (strict) and returns the
outputs; each one listed in ``config.json`` is compared with ``io.safetensors`` at atol 1e-5.
"""
import importlib
import json
import pkgutil

import pytest
import torch
from safetensors.torch import load_file

import parity_runners
from conftest import FIXTURES, fixture_dirs

SCALAR_TOL = dict(rtol=1e-5, atol=1e-5)
TENSOR_TOL = dict(rtol=0.0, atol=1e-5)


def _runners() -> dict:
    table = {}
    for info in pkgutil.iter_modules(parity_runners.__path__):
        module = importlib.import_module(f"parity_runners.{info.name}")
        for family in module.FAMILIES:
            table[family] = module
    return table


RUNNERS = _runners()
DIRS = fixture_dirs()


@pytest.mark.skipif(not DIRS, reason=f"no parity fixtures at {FIXTURES} (set VITLAB_FIXTURES)")
@pytest.mark.parametrize("fixture", DIRS, ids=[d.name for d in DIRS])
def test_fixture_parity(fixture):
    config = json.loads((fixture / "config.json").read_text())
    family = config["family"]
    if family not in RUNNERS:
        pytest.skip(f"family '{family}' is not implemented in vitlab yet")
    weights = load_file(str(fixture / "weights.safetensors"))
    io = load_file(str(fixture / "io.safetensors"))
    torch.manual_seed(0)
    with torch.no_grad():
        outputs = RUNNERS[family].run(fixture, config, weights, io)
    expected = list(config["outputs"])
    missing = [name for name in expected if name not in outputs]
    assert not missing, f"runner produced no {missing}"
    for name in expected:
        want, got = io[name], outputs[name]
        assert tuple(got.shape) == tuple(want.shape), f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
        tol = SCALAR_TOL if want.ndim == 0 else TENSOR_TOL
        if want.dtype in (torch.int64, torch.int32):
            assert torch.equal(got, want), f"{name} differs"
        else:
            torch.testing.assert_close(got.float(), want, **tol, msg=lambda m, n=name: f"{fixture.name}/{n}: {m}")

"""Shared test configuration: where the parity fixtures live, deterministic threads."""
import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("VITLAB_FIXTURES", ROOT.parent / "shared" / "fixtures"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def fixture_dirs() -> list[Path]:
    """Every fixture folder (a folder with config.json) under $VITLAB_FIXTURES."""
    if not FIXTURES.is_dir():
        return []
    return sorted(p for p in FIXTURES.iterdir() if (p / "config.json").is_file())


def manifest_path(name: str) -> Path:
    return FIXTURES / "manifests" / f"{name}.json"


@pytest.fixture
def require_fixtures():
    if not FIXTURES.is_dir():
        pytest.skip(f"parity fixtures not found at {FIXTURES} (set VITLAB_FIXTURES)")
    return FIXTURES


TORCHVISION_STUB = ROOT.parent / "shared" / "torchvision_stub"


def import_timm():
    """timm itself, with the stand-in torchvision beside the repository on the path (vitlab never imports
    torchvision); skips the test where timm cannot be imported."""
    import sys
    if TORCHVISION_STUB.is_dir() and str(TORCHVISION_STUB) not in sys.path:
        sys.path.append(str(TORCHVISION_STUB))  # appended: a real torchvision, if any, still wins
    try:
        import timm
        import timm.data.auto_augment  # noqa: F401 - the submodules the tests use
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision failing to load
        pytest.skip(f"timm cannot be imported here ({type(e).__name__}: {str(e)[:120]})")
    return timm


@pytest.fixture
def real_timm():
    return import_timm()

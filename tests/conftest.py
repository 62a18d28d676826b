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

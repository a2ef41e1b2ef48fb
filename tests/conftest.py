"""Shared fixtures. Data lives outside the repo (../shared/data), never inside it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The Redis fixtures (embedded + the server at OUTERLOOP_TEST_REDIS_URL) for every test module.
pytest_plugins = ["tests.redis_fixtures"]

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The MovieLens data root (``OUTERLOOP_DATA_DIR`` or ``../shared/data``).

    Fails, never skips, when it is missing: a test run that silently skips the real-data
    tests would look green while checking nothing.
    """
    path = Path(os.environ.get("OUTERLOOP_DATA_DIR") or DEFAULT_DATA_DIR)
    if not (path / "ml-100k").is_dir():
        pytest.fail(f"MovieLens data not found at {path} (set OUTERLOOP_DATA_DIR or provide ../shared/data)")
    return path

"""Shared test fixtures: quiet TensorFlow and the real photos in ../shared/data/stones20."""

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest

REPO = Path(__file__).resolve().parents[1]
STONES20 = REPO.parent / "shared" / "data" / "stones20"


@pytest.fixture(scope="session")
def stones20() -> Path:
    """The 20 real photos with masks; CI must have them, elsewhere their absence skips."""
    if not STONES20.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{STONES20} is missing: CI needs ../shared beside the clone")
        pytest.skip(f"{STONES20} is not here")
    return STONES20

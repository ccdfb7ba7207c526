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


@pytest.fixture(scope="session")
def tiny_photos(tmp_path_factory) -> Path:
    """Ten small synthetic photos with masks, in the prototype's layout."""
    from tools.make_sample import write_sample

    folder = tmp_path_factory.mktemp("tiny") / "photos"
    write_sample(folder, count=10, height=96, width=128, seed=1, workers=1)
    return folder


@pytest.fixture(scope="session")
def tiny_records(tiny_photos, tmp_path_factory) -> Path:
    """tiny_photos as 64×64 records: 8 train photos in 8 shards, 2 val photos."""
    from tools.build_records import main as build_records

    out = tmp_path_factory.mktemp("tiny") / "records"
    assert build_records(["--data", str(tiny_photos), "--out", str(out), "--size", "64", "--workers", "1"]) == 0
    return out


@pytest.fixture
def network_inputs(monkeypatch):
    """The shapes of the image batches the network receives during a run, in order (stoneseg.inference's
    run_model inputs, before a short batch is padded)."""
    from stoneseg import inference

    shapes = []
    real = inference.run_model

    def recording(model, images, batch_size):
        shapes.append(images.shape)
        return real(model, images, batch_size)

    monkeypatch.setattr(inference, "run_model", recording)
    return shapes


@pytest.fixture
def mixed_float16():
    """Keras' mixed_float16 policy for one test, float32 again after it."""
    import keras

    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")

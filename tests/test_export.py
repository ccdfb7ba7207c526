"""stoneseg.export: each format loads back with its own runtime, keeps the documented interface and the
model's scale, matches the Keras model, and a bad export or a bad input never leaves a file at --out.

The models are resnet18-UNets with random (seeded) weights at 64 px: a model of one size (photos
squashed to it) and a model of any size with a photo scale. LiteRT and ONNX tests need the export extra.
"""

import importlib.util
import json
import signal
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from killed_publish import publish_in_a_process

from stoneseg import export
from stoneseg.model import build_unet

EXTRA = "not installed (pip install -e '.[export]')"
needs_litert = pytest.mark.skipif(importlib.util.find_spec("ai_edge_litert") is None,
                                  reason=f"LiteRT export: ai-edge-litert {EXTRA}")
needs_onnx = pytest.mark.skipif(any(importlib.util.find_spec(name) is None for name in ("tf2onnx", "onnxruntime")),
                                reason=f"ONNX export: tf2onnx or onnxruntime {EXTRA}")
SCALE = 0.25


@pytest.fixture(scope="module")
def squash_model(tmp_path_factory):
    """A model of 64x64 images, as trained on squashed photos (no scale)."""
    keras.utils.set_random_seed(1)
    path = tmp_path_factory.mktemp("models") / "squash64.keras"
    build_unet((64, 64, 3)).save(path)
    return path


@pytest.fixture(scope="module")
def scale_model(tmp_path_factory):
    """A model of any input size, trained (as far as it knows) on photos resized by SCALE."""
    keras.utils.set_random_seed(2)
    path = tmp_path_factory.mktemp("models") / "scale.keras"
    build_unet((None, None, 3), scale=SCALE).save(path)
    return path


@pytest.fixture(scope="module")
def photo(stones20):
    return stones20 / "Image01.JPG"


def run(capsys, *argv):
    """export.main's exit status, stdout and stderr; argparse's exit counts as a status too."""
    try:
        status = export.main([str(arg) for arg in argv])
    except SystemExit as exit:
        status = exit.code
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_error_line(err, *fragments, prog="export"):
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"{prog}: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def keras_probabilities(model_path, image):
    model = keras.models.load_model(model_path)
    return np.asarray(model(image[None].astype(np.float32), training=False))


def no_leftovers(folder):
    return not [path.name for path in folder.iterdir() if ".partial-" in path.name]


# ----------------------------------------------------------------------------- the command line
@pytest.mark.parametrize("arguments, fragment", [
    (["--format", "tensorrt", "--out", "x"], "invalid choice: 'tensorrt'"),
    (["--format", "litert", "--out", "x.tflite", "--input-size", "100"], "100x100"),
    (["--format", "litert", "--out", "x.tflite", "--input-size", "64", "96", "128"], "HEIGHT [WIDTH]"),
    (["--format", "onnx", "--out", "x.onnx", "--quantize", "float16"], "--quantize is for --format litert"),
    (["--format", "litert", "--out", "x.onnx"], "is a .tflite file"),
])
def test_bad_arguments_get_one_error_line(capsys, tmp_path, arguments, fragment):
    status, _, err = run(capsys, tmp_path / "m.keras", *arguments, "--photo", tmp_path / "p.jpg")
    assert status == 2
    assert_one_error_line(err, fragment, prog="python -m stoneseg.export")


@pytest.mark.parametrize("zipped, problem", [(False, "not a Keras model"),
                                              (True, "cannot be loaded as a Keras model")])
def test_a_file_that_is_not_a_model_is_named_and_nothing_is_written(capsys, tmp_path, photo, zipped, problem):
    model = tmp_path / "notes.keras"
    if zipped:
        with zipfile.ZipFile(model, "w") as archive:
            archive.writestr("notes.txt", "a zip archive, but no model inside")
    else:
        model.write_text("not a model")
    status, _, err = run(capsys, model, "--format", "saved_model", "--out", tmp_path / "sm", "--photo", photo)
    assert status == 1
    assert_one_error_line(err, f"{model}: {problem}")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.keras"]


def test_an_existing_out_is_refused_and_kept_without_overwrite(capsys, tmp_path, squash_model, photo):
    out = tmp_path / "model.tflite"
    out.write_bytes(b"an earlier export")
    status, _, err = run(capsys, squash_model, "--format", "litert", "--out", out, "--photo", photo)
    assert status == 1
    assert_one_error_line(err, f"{out} exists; pass --overwrite")
    assert out.read_bytes() == b"an earlier export"


def test_an_existing_description_beside_the_out_is_refused_too(capsys, tmp_path, squash_model, photo):
    (tmp_path / "model.onnx.json").write_text("{}")
    status, _, err = run(capsys, squash_model, "--format", "onnx", "--out", tmp_path / "model.onnx", "--photo", photo)
    assert status == 1
    assert_one_error_line(err, "model.onnx.json exists")


def test_a_saved_model_replacement_killed_midway_is_put_back_by_the_next_run(capsys, tmp_path, squash_model, photo):
    """A --overwrite export SIGKILLed after moving the earlier SavedModel folder aside, before renaming its
    own into place (the same files.staged_folder publish): the next run puts the earlier one back, then
    refuses to replace it without --overwrite."""
    out = tmp_path / "sm"
    out.mkdir()
    (out / "saved_model.pb").write_text("an earlier export")
    assert publish_in_a_process("folder", out, kill_before_rename=1) == -signal.SIGKILL
    assert not out.exists()
    status, _, err = run(capsys, squash_model, "--format", "saved_model", "--out", out, "--photo", photo)
    assert status == 1 and "put back what it had moved aside" in err
    assert_one_error_line(err, f"{out} exists; pass --overwrite")
    assert [path.name for path in out.iterdir()] == ["saved_model.pb"]
    assert (out / "saved_model.pb").read_text() == "an earlier export"
    assert [path.name for path in tmp_path.iterdir()] == ["sm"]


def test_a_missing_photo_is_named(capsys, tmp_path, squash_model):
    status, _, err = run(capsys, squash_model, "--format", "saved_model", "--out", tmp_path / "sm",
                         "--photo", tmp_path / "nowhere.jpg")
    assert status == 1
    assert_one_error_line(err, "nowhere.jpg: no such photo")


@needs_litert
def test_litert_of_a_model_of_any_size_needs_an_input_size(capsys, tmp_path, scale_model, photo):
    status, _, err = run(capsys, scale_model, "--format", "litert", "--out", tmp_path / "m.tflite", "--photo", photo)
    assert status == 1
    assert_one_error_line(err, "takes images of any size", "--input-size")
    assert list(tmp_path.iterdir()) == []


def test_input_size_cannot_change_a_model_of_one_size(capsys, tmp_path, squash_model, photo):
    status, _, err = run(capsys, squash_model, "--format", "saved_model", "--out", tmp_path / "sm",
                         "--input-size", "128", "--photo", photo)
    assert status == 1
    assert_one_error_line(err, "takes 64x64 images only")


# ----------------------------------------------------------------------------- verification
def test_compare_and_verdict_apply_the_limits():
    reference = np.array([[0.2, 0.49, 0.51, 0.9]], np.float32)
    agreement = export.compare(reference, reference + np.float32([[0, 0.02, 0, 5e-5]]))
    assert agreement.mask_agreement == 0.75 and agreement.pixels == 4
    assert agreement.max_abs_diff == pytest.approx(0.02)
    assert export.verdict(export.Agreement(5e-5, 1.0, 10), quantized=False) is None
    assert "max |difference|" in export.verdict(export.Agreement(2e-4, 1.0, 10), quantized=False)
    assert "mask agreement" in export.verdict(export.Agreement(1e-5, 0.998, 10), quantized=False)
    assert export.verdict(export.Agreement(0.2, 0.995, 10), quantized=True) is None
    assert "quantized" in export.verdict(export.Agreement(0.2, 0.985, 10), quantized=True)
    total = export.pooled([export.Agreement(1e-6, 1.0, 300), export.Agreement(3e-6, 0.9, 100)])
    assert total == export.Agreement(3e-6, pytest.approx(0.975), 400)


@pytest.mark.parametrize("format, out", [("saved_model", "sm"), ("litert", "model.tflite")])
def test_an_export_that_disagrees_is_not_published(capsys, monkeypatch, tmp_path, squash_model, photo, format, out):
    """A converter bug that shifts the probabilities by 2e-4 fails the check; nothing appears at --out."""
    def write_stand_in(model, format, path, input_size, quantize=None):
        (path.mkdir(exist_ok=True) if format == "saved_model" else path.write_bytes(b"stand-in"))
        write_stand_in.model = model

    def open_shifted(format, path, threads=None, outputs=("probabilities",)):
        return lambda images: np.asarray(write_stand_in.model(images.astype(np.float32))) + 2e-4

    monkeypatch.setattr(export, "write_artifact", write_stand_in)
    monkeypatch.setattr(export, "open_artifact", open_shifted)
    monkeypatch.setitem(export.RUNTIME_MODULES, "litert", ())
    status, out_text, err = run(capsys, squash_model, "--format", format, "--out", tmp_path / out, "--photo", photo)
    assert status == 1
    assert "Image01.JPG: 64x64, max |difference| 2.00e-04" in out_text
    assert_one_error_line(err, "verification failed: max |difference| 2.00e-04 > 1e-04; nothing was written")
    assert list(tmp_path.iterdir()) == []


def test_photos_are_checked_as_predict_feeds_them(photo):
    """A scale model: the photo resized by its scale, mirrored out to multiples of 32 at the bottom and
    right (or centre-cropped to a fixed input size); a squash model: the photo squashed to its size."""
    scaled = export.io.read_photo(photo, export.io.Scale(SCALE))[0]
    height, width = scaled.shape[:2]
    image = export.verification_image(photo, None, SCALE, None)
    assert image.shape == (height + -height % 32, width + -width % 32, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[:height, :width], scaled)
    np.testing.assert_array_equal(image[height:, :width], scaled[height - 2:height - 2 - (-height % 32):-1][:, :width])
    crop = export.verification_image(photo, None, SCALE, (64, 96))
    np.testing.assert_array_equal(crop, scaled[(height - 64) // 2:(height - 64) // 2 + 64,
                                               (width - 96) // 2:(width - 96) // 2 + 96])
    np.testing.assert_array_equal(export.verification_image(photo, None, SCALE, (1024, 1024))[:height, :width], scaled)
    np.testing.assert_array_equal(export.verification_image(photo, (64, 64), None, (64, 64)),
                                  export.io.read_photo(photo, (64, 64))[0])


# ----------------------------------------------------------------------------- each format, for real
def test_saved_model_has_the_documented_signature_and_matches_keras(capsys, tmp_path, squash_model, photo):
    out = tmp_path / "stones"
    status, out_text, err = run(capsys, squash_model, "--format", "saved_model", "--out", out, "--photo", photo)
    assert status == 0, err
    assert "all 1 photo(s): max |difference|" in out_text and f"Wrote {out}" in out_text
    assert no_leftovers(tmp_path)

    signatures = tf.saved_model.load(str(out)).signatures
    assert list(signatures) == ["serving_default"]
    serve = signatures["serving_default"]
    _, inputs = serve.structured_input_signature
    assert inputs == {"images": tf.TensorSpec((None, 64, 64, 3), tf.uint8, name="images")}
    assert serve.structured_outputs == {"probabilities": tf.TensorSpec((None, 64, 64, 1), tf.float32,
                                                                       name="probabilities")}
    image = export.io.read_photo(photo, (64, 64))[0]
    exported = serve(images=tf.constant(image[None]))["probabilities"].numpy()
    np.testing.assert_allclose(exported, keras_probabilities(squash_model, image), atol=1e-6)

    description = json.loads((out / "assets.extra" / "stoneseg.json").read_text())
    assert description["photo_scale"] is None and description["input"]["shape"] == [None, 64, 64, 3]
    assert description["verified"]["photos"] == ["Image01.JPG"] and description["verified"]["max_abs_diff"] <= 1e-4


def test_saved_model_of_a_scale_model_takes_any_multiple_of_32_and_carries_the_scale(capsys, tmp_path, scale_model,
                                                                                   photo):
    out = tmp_path / "stones"
    status, _, err = run(capsys, scale_model, "--format", "saved_model", "--out", out, "--photo", photo)
    assert status == 0, err
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    assert serve.structured_input_signature[1]["images"].shape.as_list() == [None, None, None, 3]
    for height, width in ((64, 96), (96, 32)):
        images = np.random.default_rng(0).integers(0, 256, (2, height, width, 3), np.uint8)
        assert serve(images=tf.constant(images))["probabilities"].shape == (2, height, width, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 32"):
        serve(images=tf.zeros((1, 100, 64, 3), tf.uint8))
    description = json.loads((out / "assets.extra" / "stoneseg.json").read_text())
    assert description["photo_scale"] == SCALE and "ceil(n * 0.25)" in description["resize"]

    status, _, err = run(capsys, scale_model, "--format", "saved_model", "--out", out, "--photo", photo)
    assert status == 1 and "--overwrite" in err
    status, _, err = run(capsys, scale_model, "--format", "saved_model", "--out", out, "--photo", photo, "--overwrite")
    assert status == 0, err
    assert no_leftovers(tmp_path) and (out / "saved_model.pb").is_file()


def test_a_model_with_a_second_output_exports_both_maps_by_name(capsys, tmp_path, photo):
    """A distance model (train --output distance): the signature gives the stone probability and the distance,
    each checked against Keras, and the description names the second output."""
    keras.utils.set_random_seed(3)
    model_path = tmp_path / "distance.keras"
    build_unet((None, None, 3), scale=SCALE, output="distance").save(model_path)
    out = tmp_path / "stones"
    status, out_text, err = run(capsys, model_path, "--format", "saved_model", "--out", out, "--photo", photo)
    assert status == 0, err
    serve = tf.saved_model.load(str(out)).signatures["serving_default"]
    assert sorted(serve.structured_outputs) == ["distance", "probabilities"]
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)
    exported = serve(images=tf.constant(image[None]))
    probabilities, distance = keras.models.load_model(model_path)(image[None].astype(np.float32), training=False)
    np.testing.assert_allclose(exported["probabilities"].numpy(), probabilities, atol=1e-6)
    np.testing.assert_allclose(exported["distance"].numpy(), distance, atol=1e-6)
    assert not np.allclose(probabilities, distance)  # two different maps, not one twice
    description = json.loads((out / "assets.extra" / "stoneseg.json").read_text())
    assert description["second_output"]["name"] == "distance" and "edge" in description["second_output"]["values"]


@needs_litert
def test_litert_is_fixed_size_uint8_and_matches_keras(capsys, tmp_path, squash_model, photo):
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "stones.tflite"
    status, out_text, err = run(capsys, squash_model, "--format", "litert", "--out", out, "--photo", photo)
    assert status == 0, err
    assert no_leftovers(tmp_path)
    interpreter = Interpreter(model_path=str(out))
    assert interpreter.get_signature_list() == {"serving_default": {"inputs": ["images"], "outputs": ["probabilities"]}}
    runner = interpreter.get_signature_runner("serving_default")
    details = runner.get_input_details()["images"]
    assert details["dtype"] == np.uint8 and details["shape_signature"].tolist() == [-1, 64, 64, 3]
    image = export.io.read_photo(photo, (64, 64))[0]
    np.testing.assert_allclose(runner(images=image[None])["probabilities"], keras_probabilities(squash_model, image),
                               atol=1e-4)
    description = json.loads((tmp_path / "stones.tflite.json").read_text())
    assert description["format"] == "litert" and description["quantize"] is None


@needs_litert
def test_litert_float16_at_an_input_size_reports_its_agreement(capsys, tmp_path, scale_model, photo):
    from ai_edge_litert.interpreter import Interpreter

    out = tmp_path / "stones.tflite"
    status, out_text, err = run(capsys, scale_model, "--format", "litert", "--out", out, "--input-size", "64", "96",
                                "--quantize", "float16", "--photo", photo)
    assert status == 0, err
    assert "Image01.JPG: 96x64," in out_text and "(limit: agreement >= 99%)" in out_text
    details = Interpreter(model_path=str(out)).get_signature_runner("serving_default").get_input_details()["images"]
    assert details["shape_signature"].tolist() == [-1, 64, 96, 3]
    description = json.loads((tmp_path / "stones.tflite.json").read_text())
    assert description["quantize"] == "float16" and description["photo_scale"] == SCALE
    assert description["verified"]["mask_agreement"] >= 0.99
    assert out.stat().st_size < 0.6 * scale_model.stat().st_size  # float16 weights: half of float32's


@needs_onnx
def test_onnx_keeps_any_size_and_names_and_matches_keras(capsys, tmp_path, scale_model, photo):
    import onnxruntime

    out = tmp_path / "stones.onnx"
    status, _, err = run(capsys, scale_model, "--format", "onnx", "--out", out, "--photo", photo)
    assert status == 0, err
    assert no_leftovers(tmp_path)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (images,), (probabilities,) = session.get_inputs(), session.get_outputs()
    assert (images.name, images.type, images.shape[3]) == ("images", "tensor(uint8)", 3)
    assert (probabilities.name, probabilities.type) == ("probabilities", "tensor(float)")
    image = export.verification_image(photo, None, SCALE, (96, 64))
    exported = session.run(["probabilities"], {"images": image[None]})[0]
    np.testing.assert_allclose(exported, keras_probabilities(scale_model, image), atol=1e-4)
    assert json.loads((tmp_path / "stones.onnx.json").read_text())["photo_scale"] == SCALE

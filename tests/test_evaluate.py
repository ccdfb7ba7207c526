"""stoneseg.evaluate: scores equal plain NumPy and Keras' BinaryIoU, defined edge cases, and the CLI's reports."""

import csv
import json
import math
import shutil
import signal

import cv2
import keras
import numpy as np
import pytest
from keras import layers
from killed_publish import publish_in_a_process

from stoneseg import evaluate, io
from stoneseg.data import load_manifest, make_dataset
from stoneseg.metrics import BinaryDice
from stoneseg.model import build_unet
from stoneseg.predict import full_size_mask

NO_NAN = {"parse_constant": lambda name: pytest.fail(f"{name} in metrics.json")}


@pytest.fixture(scope="module")
def unet64(tmp_path_factory):
    """A random-weight 64x64 UNet: its masks are arbitrary but fixed, which is all scoring needs."""
    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("models") / "unet.keras"
    build_unet((64, 64, 3)).save(path)
    return path


@pytest.fixture(scope="module")
def never_stone(tmp_path_factory):
    """A 64x64 model whose probability is sigmoid(-20) everywhere: it never predicts a stone."""
    images = keras.Input((64, 64, 3))
    scores = layers.Conv2D(1, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(-20))(images)
    path = tmp_path_factory.mktemp("models") / "never.keras"
    keras.Model(images, layers.Activation("sigmoid")(scores)).save(path)
    return path


def run(capsys, *argv):
    status = evaluate.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_report(out):
    metrics = json.loads((out / "metrics.json").read_text(), **NO_NAN)
    with (out / "per_image.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    return metrics, rows


def numpy_scores(truth, predicted):
    """The textbook formulas, written independently of evaluate."""
    truth, predicted = truth.astype(bool), predicted.astype(bool)
    intersection = np.logical_and(truth, predicted).sum()
    union = np.logical_or(truth, predicted).sum()
    return {"iou": intersection / union, "dice": 2 * intersection / (truth.sum() + predicted.sum()),
            "precision": intersection / predicted.sum(), "recall": intersection / truth.sum()}


# ----------------------------------------------------------------------------- scoring
def test_scores_of_a_hand_made_pair():
    truth = np.array([[1, 1, 1, 0, 0],
                      [1, 0, 0, 0, 0]])
    predicted = np.array([[1, 1, 0, 1, 1],
                          [1, 0, 0, 0, 0]])
    counts = evaluate.confusion_counts(truth, predicted)
    assert counts == evaluate.Counts(tp=3, fp=2, fn=1, tn=4)
    assert evaluate.scores(counts) == pytest.approx({"iou": 3 / 6, "dice": 6 / 9, "precision": 3 / 5, "recall": 3 / 4})


def test_scores_match_numpy_and_pooled_scores_match_keras_metrics():
    rng = np.random.default_rng(0)
    iou_metric = keras.metrics.BinaryIoU(target_class_ids=[1], threshold=0.5)
    dice_metric = BinaryDice(threshold=0.5)
    total = evaluate.Counts()
    for shape in ((64, 64), (37, 91), (200, 120)):
        truth = rng.random(shape) < rng.uniform(0.2, 0.8)
        probability = np.clip(truth * 0.7 + rng.random(shape) * 0.6 - 0.15, 0, 1).astype(np.float32)
        predicted = probability >= 0.5
        counts = evaluate.confusion_counts(truth, predicted)
        assert evaluate.scores(counts) == pytest.approx(numpy_scores(truth, predicted), abs=1e-12)
        assert counts.tp + counts.fp + counts.fn + counts.tn == truth.size
        total = total + counts
        iou_metric.update_state(truth.astype(np.float32), probability)
        dice_metric.update_state(truth.astype(np.float32), probability)
    pooled = evaluate.scores(total)
    assert pooled["iou"] == pytest.approx(float(iou_metric.result()), abs=1e-6)
    assert pooled["dice"] == pytest.approx(float(dice_metric.result()), abs=1e-6)


@pytest.mark.parametrize("truth, predicted, expected", [
    ("stones", "same", dict(iou=1, dice=1, precision=1, recall=1)),  # perfect prediction
    ("empty", "empty", dict(iou=1, dice=1, precision=1, recall=1)),  # no stones, none predicted
    ("empty", "stones", dict(iou=0, dice=0, precision=0, recall=1)),  # no stones, some predicted
    ("stones", "empty", dict(iou=0, dice=0, precision=1, recall=0)),  # stones, none predicted
    ("full", "full", dict(iou=1, dice=1, precision=1, recall=1)),  # all stone
])
def test_edge_cases_have_defined_scores_and_no_division_by_zero(truth, predicted, expected):
    stones = np.zeros((8, 8), np.uint8)
    stones[2:5, 3:7] = 1
    masks = {"stones": stones, "empty": np.zeros((8, 8), np.uint8), "full": np.ones((8, 8), np.uint8)}
    masks["same"] = masks[truth]
    with np.errstate(all="raise"):
        assert evaluate.scores(evaluate.confusion_counts(masks[truth], masks[predicted])) == expected


def test_mean_over_photos_and_pooled_pixels_differ_as_defined():
    """A 100-pixel photo scored perfectly and a 10-pixel one entirely missed."""
    big = evaluate.PhotoScore("big", 10, 10, {evaluate.MODEL: evaluate.Counts(tp=40, tn=60)})
    small = evaluate.PhotoScore("small", 2, 5, {evaluate.MODEL: evaluate.Counts(fn=4, tn=6)})
    summary = evaluate.summary([big, small], evaluate.MODEL)
    assert summary["mean"] == pytest.approx({"iou": 0.5, "dice": 0.5, "precision": 1.0, "recall": 0.5})
    assert summary["pooled"] == pytest.approx({"iou": 40 / 44, "dice": 80 / 84, "precision": 1.0, "recall": 40 / 44})
    assert summary["counts"] == {"tp": 40, "fp": 0, "fn": 4, "tn": 66}


# ----------------------------------------------------------------------------- the command line
def test_records_report_agrees_with_numpy_and_with_itself(capsys, tmp_path, unet64, tiny_records):
    out = tmp_path / "report"
    status, stdout, _ = run(capsys, unet64, "--records", tiny_records, "--split", "val", "--out", out)
    assert status == 0
    assert sorted(path.name for path in out.iterdir()) == ["metrics.json", "per_image.csv", "worst.png"]
    metrics, rows = read_report(out)
    val_sources = load_manifest(tiny_records)["splits"]["val"]["sources"]
    assert [row["file"] for row in rows] == sorted(val_sources) and metrics["photos"] == 2
    assert set(metrics["scores"]) == {"model"}  # records hold resized masks only

    # The same photos through the training pipeline and plain NumPy.
    model = keras.models.load_model(unet64)
    expected = []
    for images, masks in make_dataset(tiny_records, "val", batch_size=2, training=False):
        predicted = model.predict(images, verbose=0)[..., 0] >= 0.5
        expected += [numpy_scores(mask[..., 0].numpy(), p) for mask, p in zip(masks, predicted)]
    got = [{name: float(row[f"model_{name}"]) for name in evaluate.SCORES} for row in rows]
    assert sorted(got, key=lambda s: s["iou"]) == [pytest.approx(e, abs=1e-6)
                                                   for e in sorted(expected, key=lambda s: s["iou"])]

    model_scores = metrics["scores"]["model"]
    for name in evaluate.SCORES:
        assert model_scores["mean"][name] == pytest.approx(np.mean([float(row[f"model_{name}"]) for row in rows]), abs=1e-6)
    summed = {key: sum(int(row[f"model_{key}"]) for row in rows) for key in ("tp", "fp", "fn", "tn")}
    assert summed == model_scores["counts"] and summed["tp"] + summed["fp"] + summed["fn"] + summed["tn"] == 2 * 64 * 64
    assert model_scores["pooled"] == pytest.approx(evaluate.scores(evaluate.Counts(**summed)))
    assert f"{model_scores['pooled']['iou']:.4f}" in stdout and "mean of 2 photos" in stdout

    sheet = cv2.imread(str(out / "worst.png"))
    text = evaluate.SHEET_TEXT_HEIGHT
    assert sheet.shape[0] == 2 * text + 2 * (text + evaluate.SHEET_ROW_HEIGHT)  # title, legend, 2 labelled rows
    assert [entry["iou"] for entry in metrics["worst"]] == pytest.approx(sorted(float(row["model_iou"]) for row in rows),
                                                                       abs=1e-6)


def test_existing_report_is_refused_without_overwrite(capsys, tmp_path, unet64, tiny_records):
    out = tmp_path / "report"
    assert run(capsys, unet64, "--records", tiny_records, "--out", out, "--worst", "0")[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["metrics.json", "per_image.csv"]
    (out / "notes.txt").write_text("mine")
    status, _, stderr = run(capsys, unet64, "--records", tiny_records, "--out", out)
    assert status == 1 and f"{out} exists" in stderr and "--overwrite" in stderr
    assert sorted(path.name for path in out.iterdir()) == ["metrics.json", "notes.txt", "per_image.csv"]
    assert run(capsys, unet64, "--records", tiny_records, "--out", out, "--overwrite")[0] == 0
    assert sorted(path.name for path in out.iterdir()) == ["metrics.json", "per_image.csv", "worst.png"]
    assert [path.name for path in tmp_path.iterdir()] == ["report"]  # no staging or retired folders left


def test_data_folder_scores_both_resolutions_like_records_and_predict(capsys, tmp_path, unet64, tiny_photos,
                                                                      tiny_records):
    model_copy = tmp_path / "runs" / "tiny.keras"
    model_copy.parent.mkdir()
    shutil.copy(unet64, model_copy)
    status, stdout, _ = run(capsys, model_copy, "--data", tiny_photos, "--worst", "3")
    out = tmp_path / "runs" / "evaluations" / "tiny-photos"  # the default: beside the model
    assert status == 0 and str(out) in stdout
    metrics, rows = read_report(out)
    assert metrics["photos"] == len(rows) == 10 and set(metrics["scores"]) == {"model", "original"}
    assert "at each photo's original size" in stdout

    # At the model's resolution, the val photos score exactly as their records do.
    records_out = tmp_path / "records-report"
    assert run(capsys, model_copy, "--records", tiny_records, "--split", "val", "--out", records_out)[0] == 0
    _, record_rows = read_report(records_out)
    by_file = {row["file"]: row for row in rows}
    for record_row in record_rows:
        for key, value in record_row.items():
            assert by_file[record_row["file"]][key] == value

    # At the original size: predict's upsampled mask against the original mask thresholded at 127.
    model = keras.models.load_model(model_copy)
    for row in rows[:3]:
        image, original = io.read_photo(tiny_photos / row["file"], 64)
        probability = model.predict(image[None], verbose=0)[0, ..., 0]
        predicted = full_size_mask(probability, original, 0.5) > 0
        truth = cv2.imread(str(tiny_photos / row["file"].replace(".JPG", "_label.jpg")), cv2.IMREAD_GRAYSCALE) > 127
        assert (int(row["width"]), int(row["height"])) == (128, 96) == truth.shape[::-1]
        for name, value in numpy_scores(truth, predicted).items():
            assert float(row[f"original_{name}"]) == pytest.approx(value, abs=1e-6)

    sheet = cv2.imread(str(out / "worst.png"))
    text = evaluate.SHEET_TEXT_HEIGHT
    assert sheet.shape[0] == 2 * text + 3 * (text + evaluate.SHEET_ROW_HEIGHT)
    worst_ious = [entry["iou"] for entry in metrics["worst"]]
    assert worst_ious == pytest.approx(sorted(float(row["original_iou"]) for row in rows)[:3], abs=1e-6)


def test_unreadable_pairs_are_named_and_left_out_while_the_rest_are_scored(capsys, tmp_path, unet64, tiny_photos):
    data = tmp_path / "data"
    data.mkdir()
    for stem in ("Image01", "Image02", "Image03"):
        shutil.copy(tiny_photos / f"{stem}.JPG", data)
        shutil.copy(tiny_photos / f"{stem}_label.jpg", data)
    photo = (data / "Image02.JPG").read_bytes()
    (data / "Image02.JPG").write_bytes(photo[: len(photo) // 2])
    shutil.copy(tiny_photos / "Image04.JPG", data)  # no mask
    status, _, stderr = run(capsys, unet64, "--data", data, "--out", tmp_path / "report")
    assert status == 1
    assert "Image02.JPG: truncated" in stderr and "Image04.JPG: no mask" in stderr
    metrics, rows = read_report(tmp_path / "report")
    assert [row["file"] for row in rows] == ["Image01.JPG", "Image03.JPG"]
    assert len(metrics["skipped"]) == 2


def test_empty_predictions_and_photos_without_stones(capsys, tmp_path, never_stone, tiny_records):
    """A model that never predicts a stone: IoU, Dice and recall 0 and precision 1 on photos with stones;
    every score 1 on photos with no stones (here: black photos with black masks)."""
    out = tmp_path / "with-stones"
    assert run(capsys, never_stone, "--records", tiny_records, "--out", out)[0] == 0
    metrics, _ = read_report(out)
    scores = metrics["scores"]["model"]
    assert scores["mean"] == {"iou": 0, "dice": 0, "precision": 1, "recall": 0} == scores["pooled"]
    assert scores["counts"]["tp"] == scores["counts"]["fp"] == 0 and scores["counts"]["fn"] > 0

    data = tmp_path / "no-stones"
    data.mkdir()
    for stem in ("A", "B"):
        cv2.imwrite(str(data / f"{stem}.png"), np.zeros((50, 70, 3), np.uint8))
        cv2.imwrite(str(data / f"{stem}_label.png"), np.zeros((50, 70), np.uint8))
    out = tmp_path / "no-stones-report"
    assert run(capsys, never_stone, "--data", data, "--out", out)[0] == 0
    metrics, rows = read_report(out)
    for resolution in ("model", "original"):
        assert metrics["scores"][resolution]["mean"] == dict.fromkeys(evaluate.SCORES, 1.0)
        assert metrics["scores"][resolution]["pooled"] == dict.fromkeys(evaluate.SCORES, 1.0)
    assert all(not math.isnan(float(value)) for row in rows for key, value in row.items() if key != "file")


def test_a_report_replacement_killed_midway_is_put_back_by_the_next_run(capsys, tmp_path, unet64, tiny_records):
    """A run SIGKILLed after moving the earlier report aside, before renaming its own into place: the
    next run puts the earlier report back (and then refuses to replace it without --overwrite)."""
    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.json").write_text("earlier report")
    assert publish_in_a_process("folder", out, kill_before_rename=1) == -signal.SIGKILL
    assert not out.exists()
    status, _, stderr = run(capsys, unet64, "--records", tiny_records, "--out", out)
    assert status == 1 and "put back what it had moved aside" in stderr and f"{out} exists" in stderr
    assert [path.name for path in out.iterdir()] == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "earlier report"
    assert [path.name for path in tmp_path.iterdir()] == ["report"]

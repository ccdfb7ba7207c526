"""stoneseg.evaluate: scores equal plain NumPy and Keras' BinaryIoU, defined edge cases, and the CLI's reports."""

import csv
import json
import math
import shutil
import signal
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from keras import layers
from killed_publish import publish_in_a_process
from tiny_models import brightness, brightness_model

from stoneseg import evaluate, io
from stoneseg.data import load_manifest, read_examples
from stoneseg.metrics import BinaryDice
from stoneseg.model import build_unet

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


@pytest.fixture(scope="module")
def scale_records(tiny_photos, tmp_path_factory):
    """tiny_photos as scale-0.5 records (48 x 64 each), through tools.build_records --scale."""
    from tools.build_records import main as build_records

    out = tmp_path_factory.mktemp("tiny") / "scale-records"
    assert build_records(["--data", str(tiny_photos), "--out", str(out), "--scale", "0.5", "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def scale_model(tmp_path_factory):
    """The brightness model saved with scale 0.5, as if trained on scale_records."""
    path = tmp_path_factory.mktemp("models") / "scale.keras"
    brightness_model(None, scale=0.5).save(path)
    return path


def run(capsys, *argv):
    """evaluate.main on `argv`, in float32 unless --precision is given: the expected figures are float32's on any
    machine (auto picks bfloat16 on an avx512_bf16 CPU; tests/test_precision.py covers that)."""
    if "--precision" not in argv:
        argv = (*argv, "--precision", "float32")
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


# Two 128x128 PNG photos: bright rectangles, which the brightness model calls stone, on black; their
# masks are other rectangles. Every edge is on an even pixel, so at the model's 64x64 each edge falls on a
# pixel boundary, bilinear upsampling by 2 puts it back exactly, and the counts can be worked out by hand.
# A's mask also has one stray stone pixel, which only the original size sees (it is a quarter of a
# model pixel, below the mask threshold).
RECTANGLES = {  # name: (bright rows, bright columns), (stone rows, stone columns)
    "A.png": ((slice(16, 48), slice(32, 96)), (slice(32, 64), slice(64, 112))),  # 2048 bright, 1536 stone, 512 both
    "B.png": ((slice(64, 128), slice(0, 64)), (slice(64, 128), slice(0, 32))),  # 4096 bright, 2048 stone, all inside
}
STRAY_STONE_PIXEL = (101, 9)  # in A's mask
HAND_COUNTS = {
    "A.png": {"original": evaluate.Counts(tp=512, fp=1536, fn=1024 + 1, tn=16384 - 3072 - 1),
              "model": evaluate.Counts(tp=128, fp=384, fn=256, tn=4096 - 768)},
    "B.png": {"original": evaluate.Counts(tp=2048, fp=2048, fn=0, tn=16384 - 4096),
              "model": evaluate.Counts(tp=512, fp=512, fn=0, tn=4096 - 1024)},
}
HAND_IOU = {"A.png": {"original": 512 / 3073, "model": 128 / 768}, "B.png": {"original": 0.5, "model": 0.5}}


@pytest.fixture(scope="module")
def rectangles(tmp_path_factory):
    """The RECTANGLES photos with their masks, and the brightness model at 64x64."""
    folder = tmp_path_factory.mktemp("rectangles")
    data = folder / "data"
    data.mkdir()
    for name, (bright, stone) in RECTANGLES.items():
        photo, mask = np.zeros((128, 128, 3), np.uint8), np.zeros((128, 128), np.uint8)
        photo[bright], mask[stone] = 255, 255
        if name == "A.png":
            mask[STRAY_STONE_PIXEL] = 255
        cv2.imwrite(str(data / name), photo)
        cv2.imwrite(str(data / name.replace(".png", "_label.png")), mask)
    model = folder / "brightness.keras"
    brightness_model(64).save(model)
    return data, model


def counts_of(row, resolution):
    return evaluate.Counts(**{key: int(row[f"{resolution}_{key}"]) for key in ("tp", "fp", "fn", "tn")})


def test_counts_by_hand_per_photo_at_both_resolutions(capsys, tmp_path, rectangles, monkeypatch):
    data, model = rectangles
    reads = []
    real_read_bytes = io.read_bytes
    monkeypatch.setattr(io, "read_bytes", lambda path: reads.append(Path(path).name) or real_read_bytes(path))
    status, _, _ = run(capsys, model, "--data", data, "--out", tmp_path / "report")  # both in one batch
    assert status == 0
    assert sorted(reads) == ["A.png", "A_label.png", "B.png", "B_label.png"]  # each file read once
    metrics, rows = read_report(tmp_path / "report")
    assert [row["file"] for row in rows] == ["A.png", "B.png"]
    for row in rows:
        for resolution in ("model", "original"):
            assert counts_of(row, resolution) == HAND_COUNTS[row["file"]][resolution], (row["file"], resolution)
            assert float(row[f"{resolution}_iou"]) == pytest.approx(HAND_IOU[row["file"]][resolution], abs=1e-6)
    assert metrics["scores"]["original"]["counts"] == {"tp": 2560, "fp": 3584, "fn": 1025, "tn": 25599}
    assert metrics["scores"]["original"]["pooled"]["iou"] == pytest.approx(2560 / 7169)
    assert metrics["scores"]["original"]["mean"]["iou"] == pytest.approx((512 / 3073 + 0.5) / 2)
    assert [entry["file"] for entry in metrics["worst"]] == ["A.png", "B.png"]  # lowest IoU first

    # The same photos as records (both in train), scored at the model's resolution: the same counts.
    from tools.build_records import main as build_records

    records = tmp_path / "records"
    assert build_records(["--data", str(data), "--out", str(records), "--size", "64", "--val-fraction", "0",
                          "--workers", "1"]) == 0
    assert run(capsys, model, "--records", records, "--split", "train", "--out", tmp_path / "from-records")[0] == 0
    _, rows = read_report(tmp_path / "from-records")
    assert {row["file"]: counts_of(row, "model") for row in rows} == {
        name: counts["model"] for name, counts in HAND_COUNTS.items()}


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

    # The same photos, read from the shards by tf.data and scored by plain NumPy, row by row by name.
    model = keras.models.load_model(unet64)
    expected = {}
    for example in read_examples(tiny_records, "val"):
        predicted = model.predict(example["image"][None], verbose=0)[0, ..., 0] >= 0.5
        expected[example["name"].numpy().decode()] = numpy_scores(example["mask"].numpy()[..., 0], predicted)
    assert len(expected) == 2
    for row in rows:
        got = {name: float(row[f"model_{name}"]) for name in evaluate.SCORES}
        assert got == pytest.approx(expected[row["file"]], abs=1e-6), row["file"]

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

    # At the original size (scored by hand in test_counts_by_hand_...): every pixel of the original.
    for row in rows:
        assert (int(row["width"]), int(row["height"])) == (128, 96)
        assert sum(int(row[f"original_{key}"]) for key in ("tp", "fp", "fn", "tn")) == 128 * 96

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
    d_errors = ("instances_d50_relative_error", "instances_d80_relative_error")  # empty: no stone on either side
    assert all(row[key] == "" for row in rows for key in d_errors)
    assert all(not math.isnan(float(value)) for row in rows for key, value in row.items()
               if key != "file" and key not in d_errors)
    assert metrics["instances"]["f1"] == 1.0 and metrics["instances"]["d50_relative_error"] is None


# ----------------------------------------------------------------------------- models at a scale
def test_scale_records_are_scored_whole_at_their_stored_size_without_the_padding(capsys, tmp_path, scale_model,
                                                                               scale_records, network_inputs):
    """Each 48 x 64 record runs whole, mirrored out to 64 x 64, and is scored on its own 48 x 64 pixels only,
    exactly as the brightness model's NumPy twin scores it."""
    out = tmp_path / "report"
    status, stdout, _ = run(capsys, scale_model, "--records", scale_records, "--split", "val", "--out", out)
    assert status == 0 and "resized by 0.5 (the model's)" in stdout
    assert network_inputs == [(1, 64, 64, 3)] * 2
    metrics, rows = read_report(out)
    assert metrics["scores"]["model"]["size"] == "each record's stored size (photos resized by 0.5)"
    expected = {}
    for example in read_examples(scale_records, "val").as_numpy_iterator():
        assert example["image"].shape == (48, 64, 3)
        expected[example["name"].decode()] = numpy_scores(example["mask"][..., 0], brightness(example["image"]) >= 0.5)
    assert sorted(row["file"] for row in rows) == sorted(expected)
    for row in rows:
        assert sum(int(row[f"model_{key}"]) for key in ("tp", "fp", "fn", "tn")) == 48 * 64  # no padding counted
        for name, value in expected[row["file"]].items():
            assert float(row[f"model_{name}"]) == pytest.approx(value, abs=1e-6)


def test_a_scale_model_on_a_data_folder_scores_like_its_records_and_at_original_size(capsys, tmp_path, scale_model,
                                                                                    scale_records, tiny_photos):
    status, stdout, _ = run(capsys, scale_model, "--data", tiny_photos, "--out", tmp_path / "data-report")
    assert status == 0 and "at each photo's original size" in stdout
    metrics, rows = read_report(tmp_path / "data-report")
    assert metrics["scores"]["model"]["size"] == "each photo resized by 0.5"
    assert run(capsys, scale_model, "--records", scale_records, "--out", tmp_path / "records-report")[0] == 0
    _, record_rows = read_report(tmp_path / "records-report")
    by_file = {row["file"]: row for row in rows}
    for record_row in record_rows:
        for key, value in record_row.items():
            assert by_file[record_row["file"]][key] == value
    for row in rows[:2]:  # at the original size: the 48 x 64 map upsampled to 96 x 128
        image, original = io.read_photo(tiny_photos / row["file"], io.Scale(0.5))
        upsampled = cv2.resize(brightness(image).astype(np.float32), (128, 96), interpolation=cv2.INTER_LINEAR)
        truth = cv2.imread(str(tiny_photos / row["file"].replace(".JPG", "_label.jpg")), cv2.IMREAD_GRAYSCALE) > 127
        for name, value in numpy_scores(truth, upsampled >= 0.5).items():
            assert float(row[f"original_{name}"]) == pytest.approx(value, abs=1e-3)


def test_records_of_another_kind_than_the_model_are_refused_in_one_line(capsys, tmp_path, unet64, scale_model,
                                                                       tiny_records, scale_records):
    for model, records, extra, says in (
            (scale_model, tiny_records, [], "holds photos squashed to 64x64 but"),
            (unet64, scale_records, [], "pass --scale 0.5 to run it at that scale"),
            (scale_model, scale_records, ["--scale", "0.25"], "holds photos resized by 0.5 but")):
        out = tmp_path / f"report-{len(list(tmp_path.iterdir()))}"
        status, _, stderr = run(capsys, model, "--records", records, "--out", out, *extra)
        lines = stderr.strip().splitlines()
        assert status == 1 and len(lines) == 1 and lines[0].startswith("evaluate: error: ") and says in lines[0]
        assert not out.exists()
    # A squash model told to run at the records' scale is scored on them.
    assert run(capsys, unet64, "--records", scale_records, "--scale", "0.5", "--out", tmp_path / "ok")[0] == 0


@pytest.mark.parametrize("scale", ["0", "1.01"])
def test_evaluate_refuses_a_scale_out_of_range_in_one_line(capsys, tmp_path, unet64, tiny_records, scale):
    with pytest.raises(SystemExit) as stopped:
        evaluate.main([str(unet64), "--records", str(tiny_records), "--scale", scale, "--out", str(tmp_path / "r")])
    stderr = capsys.readouterr().err
    assert stopped.value.code != 0 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if "error" in line] == [
        f"python -m stoneseg.evaluate: error: --scale must be in (0, 1], got {float(scale):g}"]
    assert not (tmp_path / "r").exists()


def test_the_worst_photos_keep_only_what_the_contact_sheet_shows():
    """A 1000 x 1500 photo at scale 1 is kept at 400 x 600 (twice the sheet's row height), its masks too."""
    worst = evaluate.WorstPhotos(1)
    truth = np.zeros((1000, 1500), np.uint8)
    truth[:500] = 1
    score = evaluate.PhotoScore("big", 1000, 1500, {evaluate.MODEL: evaluate.Counts(tp=1)})
    worst.offer(score, np.full((1000, 1500, 3), 90, np.uint8), truth, truth.astype(bool))
    (kept, image, kept_truth, kept_predicted), = worst.sorted()
    assert kept is score and image.shape == (2 * evaluate.SHEET_ROW_HEIGHT, 600, 3)
    assert kept_truth.shape == kept_predicted.shape == (400, 600)
    assert kept_truth[:199].all() and not kept_truth[201:].any() and (kept_predicted == kept_truth).all()
    sheet = evaluate.contact_sheet(worst.sorted(), "title")
    assert sheet.shape[0] == 2 * 30 + 30 + evaluate.SHEET_ROW_HEIGHT


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


# ----------------------------------------------------------------------------- stones
def test_instance_scores_by_hand_per_photo_and_pooled(capsys, tmp_path, rectangles):
    """The RECTANGLES at original size. A: true stones the 32 x 48 rectangle and the stray pixel, which is
    smaller than the smallest stone the split keeps (stones.MIN_STONE_PIXELS) and so left out, neither found
    nor missed; the predicted stone the 32 x 64 bright rectangle (IoU 512 / 3072: no match). B: the true
    64 x 32 stone and the predicted 64 x 64 one, IoU exactly 0.5: a match; both touch the photo's edge, so B
    has no D values and the pooled distributions are A's: one stone each, so D50 = D80 = its diameter."""
    data, model = rectangles
    assert run(capsys, model, "--data", data, "--out", tmp_path / "report")[0] == 0
    metrics, rows = read_report(tmp_path / "report")
    diameter = lambda area: math.sqrt(4 * area / math.pi)  # noqa: E731
    d_error = diameter(2048) / diameter(1536) - 1
    a, b = ({key.removeprefix("instances_"): row[key] for key in row if key.startswith("instances_")} for row in rows)
    assert [a[key] for key in evaluate.INSTANCE_KEYS[:6]] == ["1", "1", "1", "0.0", "0.0", "0.0"]
    assert float(a["d50_relative_error"]) == pytest.approx(d_error, abs=1e-6)
    assert float(a["d80_relative_error"]) == pytest.approx(d_error, abs=1e-6)
    assert [b[key] for key in evaluate.INSTANCE_KEYS] == ["1", "0", "1", "1.0", "1.0", "1.0", "", ""]
    pooled = metrics["instances"]
    assert {key: pooled[key] for key in ("true_count", "true_left_out", "predicted_count")} == {
        "true_count": 2, "true_left_out": 1, "predicted_count": 2}
    assert (pooled["precision"], pooled["recall"], pooled["f1"]) == pytest.approx((1 / 2, 1 / 2, 1 / 2))
    assert pooled["count_relative_error"] == pytest.approx(0)
    assert pooled["d50_relative_error"] == pytest.approx(d_error, abs=1e-6)
    assert pooled["d80_relative_error"] == pytest.approx(d_error, abs=1e-6)
    output = run(capsys, model, "--data", data, "--out", tmp_path / "again")[1]
    assert output.count("F1 0.5000 at IoU >= 0.5") == 1 and "1 smaller ones left out" in output


def test_touching_stones_score_only_when_split(capsys, tmp_path):
    """Two discs drawn touching in the photo, separated by a 3-px background gap in the true mask. A
    model that sees the photo exactly (brightness at scale 1) predicts one region: unsplit it matches
    neither true stone (each holds less than half of the union); split, both match."""
    data = tmp_path / "data"
    data.mkdir()
    photo, mask = np.full((160, 240, 3), 20, np.uint8), np.zeros((160, 240), np.uint8)
    for x in (80, 156):
        cv2.circle(photo, (x, 80), 40, (235, 235, 235), -1)
        cv2.circle(mask, (x, 80), 40, 255, -1)
    mask[:, 117:120] = 0  # the gap the true masks keep between touching stones
    cv2.imwrite(str(data / "pair.png"), photo)
    cv2.imwrite(str(data / "pair_label.png"), mask)
    model = tmp_path / "full.keras"
    brightness_model(None, scale=1.0).save(model)
    found = {}
    for mode in ("regions", "split"):
        assert run(capsys, model, "--data", data, "--out", tmp_path / mode, "--instances", mode)[0] == 0
        metrics, (row,) = read_report(tmp_path / mode)
        found[mode] = [metrics["instances"][key] for key in ("true_count", "predicted_count", "f1")]
        assert row["instances_f1"] == str(metrics["instances"]["f1"])
    assert found == {"regions": [2, 1, 0.0], "split": [2, 2, 1.0]}
    assert metrics["instances"]["predicted"].startswith("the predicted mask split")


def test_records_report_has_no_instances(capsys, tmp_path, unet64, tiny_records):
    """Resized true masks can lose the gaps between stones, so records are scored by pixels only."""
    assert run(capsys, unet64, "--records", tiny_records, "--split", "val", "--out", tmp_path / "report")[0] == 0
    metrics, rows = read_report(tmp_path / "report")
    assert metrics["instances"] is None and not any(key.startswith("instances_") for key in rows[0])

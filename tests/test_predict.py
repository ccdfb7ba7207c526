"""stoneseg.predict: masks at the photo's own size, upsampling in place, the way each kind of model is fed,
tiling, bad files, no clobbering. The models are tiny hand-made networks whose output is known (tiny_models).
"""

import csv
import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
from jpeg_exif import with_exif_orientation
from tiny_models import brightness_model, distance_model

from stoneseg import inference, outputs, predict, stones
from stoneseg.model import build_unet
from stoneseg.io import MASK_THRESHOLD


@pytest.fixture(scope="module")
def model64(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "brightness64.keras"
    brightness_model(64).save(path)
    return path


def write_jpeg(path, rgb, quality=95):
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    path.write_bytes(buffer.tobytes())
    return path




def read_mask(path):
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert mask is not None and mask.ndim == 2 and mask.dtype == np.uint8, path
    return mask


def read_rows(out):
    with (out / "predictions.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def run(capsys, *argv):
    """predict.main on `argv`, in float32 unless --precision is given: the expected figures are float32's on any
    machine (auto picks bfloat16 on an avx512_bf16 CPU; tests/test_precision.py covers that)."""
    if "--precision" not in argv:
        argv = (*argv, "--precision", "float32")
    status = predict.main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_masks_have_the_photos_size_are_binary_and_labels_are_skipped(capsys, tmp_path, model64, tiny_photos):
    out = tmp_path / "out"
    status, stdout, _ = run(capsys, model64, tiny_photos, "--out", out, "--batch-size", "3")
    assert status == 0
    photos = sorted(p for p in tiny_photos.glob("*.JPG"))
    assert len(photos) == 10
    per_photo = ("_mask.png", "_instances.png", "_stones.csv", "_stones.geojson", "_sizes.png")
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{p.stem}{suffix}" for p in photos for suffix in per_photo]
        + ["predictions.csv", "predictions_sizes.csv", "predictions_sizes.png"])
    for photo in photos:
        mask = read_mask(out / f"{photo.stem}_mask.png")
        assert mask.shape == (96, 128)
        assert set(np.unique(mask)) <= {0, 255}
        # The brightness model finds the brightest stones (a few % of each photo; the belt is dark), and
        # finds them where the photo's own mask file says the stones are.
        truth = cv2.imread(str(tiny_photos / f"{photo.stem}_label.jpg"), cv2.IMREAD_GRAYSCALE) > MASK_THRESHOLD
        found = mask > 0
        assert found.mean() > 0.02, photo.name
        assert np.sum(found & truth) / np.sum(found) > 0.9, photo.name
    rows = read_rows(out)
    assert [row["file"] for row in rows] == [str(p) for p in photos]
    for row in rows:
        assert (int(row["width"]), int(row["height"])) == (128, 96)
        mask = read_mask(out / f"{Path(row['file']).stem}_mask.png")
        assert float(row["stone_fraction"]) == pytest.approx(np.mean(mask > 0), abs=1e-6)
    assert "Wrote 10 mask(s)" in stdout


def test_upsampling_puts_a_region_where_it_is_on_a_3456x4806_photo(capsys, tmp_path, model64):
    """A white rectangle on black, squashed to 64x64 for the model: the mask must bring it back to its
    place at full size, to within one model pixel (54 rows, 75 columns)."""
    photo = np.zeros((3456, 4806, 3), np.uint8)
    top, bottom, left, right = 1000, 2000, 3000, 4500
    photo[top:bottom, left:right] = 255
    write_jpeg(tmp_path / "wide.jpg", photo)
    out = tmp_path / "out"
    assert run(capsys, model64, tmp_path / "wide.jpg", "--out", out)[0] == 0
    mask = read_mask(out / "wide_mask.png")
    assert mask.shape == (3456, 4806)
    assert (mask[top + 54:bottom - 54, left + 76:right - 76] == 255).all()
    outside = np.ones(mask.shape, bool)
    outside[top - 54:bottom + 54, left - 76:right + 76] = False
    assert not mask[outside].any()
    truth = np.zeros(mask.shape, bool)
    truth[top:bottom, left:right] = True
    iou = np.sum(truth & (mask > 0)) / np.sum(truth | (mask > 0))
    assert iou > 0.95
    row, = read_rows(out)
    assert (row["width"], row["height"], row["stone_count"]) == ("4806", "3456", "1")


def test_upsampling_is_bilinear_with_pixel_centres_aligned(capsys, tmp_path, model64):
    """A grey ramp from left to right: the model's 64 probabilities per row, interpolated linearly
    between pixel centres (NumPy, independently of OpenCV), put the crossing of --threshold 0.3 within
    1 pixel of the mask's edge. Nearest-neighbour upsampling would miss it by 21 pixels."""
    ramp = np.linspace(0, 255, 4806, dtype=np.float32)
    photo = np.repeat(np.broadcast_to(ramp, (3456, 4806))[..., None], 3, axis=2).round().astype(np.uint8)
    write_jpeg(tmp_path / "ramp.jpg", photo)
    out = tmp_path / "out"
    assert run(capsys, model64, tmp_path / "ramp.jpg", "--out", out, "--threshold", "0.3")[0] == 0
    mask = read_mask(out / "ramp_mask.png")
    image, original = predict.io.read_photo(tmp_path / "ramp.jpg", 64)
    probabilities = keras.models.load_model(model64).predict(image[None], verbose=0)[0, 32, :, 0]
    centres = (np.arange(4806) + 0.5) * 64 / 4806 - 0.5  # full-size pixel centres on the model's grid
    expected_edge = np.argmax(np.interp(centres, np.arange(64), probabilities) >= 0.3)
    edges = np.argmax(mask > 0, axis=1)
    assert original == (3456, 4806) and mask.shape == original
    assert (mask[:, -1] == 255).all() and (np.abs(edges - expected_edge) <= 1).all()


def test_mask_follows_the_exif_orientation(capsys, tmp_path, model64):
    """Stored 200 wide x 100 high with the bright half on the left, EXIF 6 (rotate 90 degrees clockwise):
    the photo is 100 wide x 200 high with the bright half on top, and so is its mask."""
    stored = np.zeros((100, 200, 3), np.uint8)
    stored[:, :100] = 255
    ok, jpeg = cv2.imencode(".jpg", stored)
    (tmp_path / "turned.jpg").write_bytes(with_exif_orientation(jpeg.tobytes(), 6))
    out = tmp_path / "out"
    assert run(capsys, model64, tmp_path / "turned.jpg", "--out", out)[0] == 0
    mask = read_mask(out / "turned_mask.png")
    assert mask.shape == (200, 100)
    assert (mask[:90] == 255).all() and not mask[110:].any()


def test_stone_fraction_and_count_in_predictions_csv(capsys, tmp_path, model64):
    """Three bright disks and a speck below the minimum stone area on a dark photo."""
    photo = np.full((480, 640, 3), 20, np.uint8)
    for x, y, radius in ((120, 120, 60), (400, 150, 80), (300, 360, 70)):
        cv2.circle(photo, (x, y), radius, (235, 235, 235), -1)
    cv2.rectangle(photo, (600, 440), (602, 442), (235, 235, 235), -1)  # 9 pixels < 0.01% of 307,200
    cv2.imwrite(str(tmp_path / "disks.png"), photo)
    out = tmp_path / "out"
    assert run(capsys, model64, tmp_path / "disks.png", "--out", out)[0] == 0
    row, = read_rows(out)
    disks = np.pi * (60**2 + 80**2 + 70**2) / (480 * 640)
    assert row["stone_count"] == "3"
    assert float(row["stone_fraction"]) == pytest.approx(disks, rel=0.05)
    assert (row["width"], row["height"]) == ("640", "480")


def test_tiled_cli_on_photos_smaller_and_larger_than_a_tile(capsys, tmp_path, tiny_photos):
    """A model of any input size: --tile is required, and gives masks of the photos' size."""
    model_path = tmp_path / "smooth.keras"
    brightness_model(None, blur=2.0).save(model_path)
    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(tiny_photos / "Image01.JPG", photos)  # 96 x 128: smaller than a 128 tile in height
    big = cv2.resize(cv2.imread(str(tiny_photos / "Image02.JPG")), (400, 300))
    cv2.imwrite(str(photos / "Big.jpg"), big)
    status, _, stderr = run(capsys, model_path, photos, "--out", tmp_path / "untiled")
    assert status == 1 and "records no scale" in stderr and "--scale F (or --tile" in stderr
    assert not (tmp_path / "untiled").exists()

    out = tmp_path / "tiled"
    assert run(capsys, model_path, photos, "--out", out, "--tile", "128", "--tile-overlap", "32")[0] == 0
    for name, shape in (("Image01", (96, 128)), ("Big", (300, 400))):
        mask = read_mask(out / f"{name}_mask.png")
        assert mask.shape == shape and set(np.unique(mask)) <= {0, 255}
        rgb = cv2.cvtColor(cv2.imread(str(photos / f"{name}.{'JPG' if name == 'Image01' else 'jpg'}")),
                           cv2.COLOR_BGR2RGB)
        whole = brightness_model(None, blur=2.0).predict(rgb[None], verbose=0)[0, ..., 0]
        assert np.mean((mask > 0) == (whole >= 0.5)) > 0.99


def disk_photo(path, height, width):
    """A bright disk on a dark photo, written as PNG (exact pixels); returns its true stone mask."""
    photo = np.full((height, width, 3), 30, np.uint8)
    cv2.circle(photo, (width // 2, height // 2), min(height, width) // 3, (230, 230, 230), -1)
    cv2.imwrite(str(path), photo)
    return photo[..., 0] > 128


def test_each_kind_of_model_gets_photos_the_way_it_was_trained(capsys, tmp_path, model64, network_inputs):
    """The network's input reveals the path: a squash model gets the photo squashed to its input size; a
    model saved with scale 0.5 gets it resized by 0.5 (75 x 100, mirrored out to 96 x 128) whole; --scale
    overrides either. Every mask has the photo's size and finds the disk."""
    scale_model = tmp_path / "scale.keras"
    brightness_model(None, scale=0.5).save(scale_model)  # the scale travels inside the .keras file
    truth = disk_photo(tmp_path / "disk.png", 150, 200)
    for model, extra, received in ((model64, [], (1, 64, 64, 3)),
                                   (scale_model, [], (1, 96, 128, 3)),
                                   (scale_model, ["--scale", "0.25"], (1, 64, 64, 3)),  # 38 x 50
                                   (model64, ["--scale", "0.5"], (1, 96, 128, 3))):
        network_inputs.clear()
        out = tmp_path / f"out-{len(list(tmp_path.iterdir()))}"
        status, stdout, _ = run(capsys, model, tmp_path / "disk.png", "--out", out, *extra)
        assert status == 0 and network_inputs == [received], (model.name, extra)
        assert ("resized by" in stdout) == (model == scale_model or bool(extra))
        mask = read_mask(out / "disk_mask.png") > 0
        assert mask.shape == (150, 200)
        assert np.sum(mask & truth) / np.sum(mask | truth) > 0.9


def test_a_scale_model_tiles_a_photo_larger_than_one_batch_of_tiles(capsys, tmp_path, network_inputs):
    """With --batch-size 1 a batch of tiles is 512 x 512 = 262,144 pixels. At scale 0.5 a 960 x 1040 photo
    becomes 480 x 520 (249,600 pixels): whole, mirrored out to 480 x 544. A 1000 x 1100 one becomes 500 x 550
    (275,000): two 512 tiles. --tile 256 tiles even the smaller one: 3 x 4 tiles overlapping by at least 128."""
    model = tmp_path / "scale.keras"
    brightness_model(None, scale=0.5).save(model)
    truths = {name: disk_photo(tmp_path / f"{name}.png", *size) for name, size in
              (("small", (960, 1040)), ("large", (1000, 1100)))}
    for photo, extra, received in (("small", [], [(1, 480, 544, 3)]),
                                   ("large", [], [(1, 512, 512, 3)] * 2),
                                   ("small", ["--tile", "256"], [(1, 256, 256, 3)] * 12)):
        network_inputs.clear()
        out = tmp_path / f"out-{photo}-{len(extra)}"
        status, _, _ = run(capsys, model, tmp_path / f"{photo}.png", "--out", out, "--batch-size", "1", *extra)
        assert status == 0 and network_inputs == received, (photo, extra)
        mask = read_mask(out / f"{photo}_mask.png") > 0
        assert np.sum(mask & truths[photo]) / np.sum(mask | truths[photo]) > 0.95


def test_a_real_unet_carries_its_scale_through_the_keras_file_to_predict(capsys, tmp_path, network_inputs):
    path = tmp_path / "unet.keras"
    keras.utils.set_random_seed(2)  # untrained weights that leave some background (some seeds predict all stone,
    build_unet((None, None, 3), scale=0.5).save(path)  # which predict refuses to split), whatever ran before
    disk_photo(tmp_path / "disk.png", 100, 140)
    status, stdout, _ = run(capsys, path, tmp_path / "disk.png", "--out", tmp_path / "out")
    assert status == 0 and "resized by 0.5 (the model's)" in stdout
    assert network_inputs == [(1, 64, 96, 3)]  # 50 x 70, mirrored out to multiples of 32
    assert read_mask(tmp_path / "out" / "disk_mask.png").shape == (100, 140)


@pytest.mark.parametrize("scale", ["0", "-0.5", "1.5"])
def test_a_scale_out_of_range_is_one_error_line_and_nothing_is_written(capsys, tmp_path, model64, scale):
    disk_photo(tmp_path / "disk.png", 60, 80)
    with pytest.raises(SystemExit) as stopped:
        predict.main([str(model64), str(tmp_path / "disk.png"), "--out", str(tmp_path / "out"), "--scale", scale])
    stderr = capsys.readouterr().err
    assert stopped.value.code != 0 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if "error" in line] == [
        f"python -m stoneseg.predict: error: --scale must be in (0, 1], got {float(scale):g}"]
    assert not (tmp_path / "out").exists()


def test_writing_a_tall_mask_of_40_stones(tmp_path):
    """write_outputs on a 2000 x 300 mask of 40 separate discs (r = 20): 40 stones, each measured about
    40 px across, the mask written as given and the 16-bit instances holding the same pixels."""
    mask = np.zeros((2000, 300), np.uint8)
    for index in range(40):
        cv2.circle(mask, (150, 25 + 50 * index), 20, 255, -1)
    settings = outputs.OutputSettings.from_args(predict.parse_args(["m.keras", "tall.png", "--out", str(tmp_path)]))
    row, table = outputs.write_outputs(tmp_path / "tall.png", mask, settings)
    assert (row.stone_count, row.edge_stones, row.width, row.height) == (40, 0, 300, 2000)
    assert len(table) == 40 and np.allclose(table.columns["diameter_px"], 41, atol=1)
    assert (read_mask(tmp_path / "tall_mask.png") == mask).all()
    labels = stones.decode_instances_png((tmp_path / "tall_instances.png").read_bytes())
    assert ((labels > 0) == (mask > 0)).all() and len(np.unique(labels)) == 41


def test_corrupt_and_empty_files_are_reported_by_name_and_the_rest_predicted(capsys, tmp_path, model64, tiny_photos):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("Image01.JPG", "Image02.JPG", "Image03.JPG"):
        shutil.copy(tiny_photos / name, photos)
    good = (tiny_photos / "Image04.JPG").read_bytes()
    (photos / "Broken.jpg").write_bytes(good[: len(good) // 2])
    (photos / "Empty.png").write_bytes(b"")
    out = tmp_path / "out"
    status, _, stderr = run(capsys, model64, photos, "--out", out, "--batch-size", "2")
    assert status == 1
    error_lines = [line for line in stderr.splitlines() if line.startswith("predict: error:")]
    assert len(error_lines) == 2
    assert any("Broken.jpg" in line and "truncated" in line for line in error_lines)
    assert any("Empty.png" in line and "empty" in line for line in error_lines)
    assert stderr.count("Broken.jpg") == stderr.count("Empty.png") == 1  # said once; the summary is a count
    assert "2 of 5 photo(s) failed" in stderr
    assert sorted(p.name for p in out.glob("*_mask.png")) == ["Image01_mask.png", "Image02_mask.png", "Image03_mask.png"]
    assert not list(out.glob("Broken*")) and not list(out.glob("Empty*"))
    assert [Path(row["file"]).name for row in read_rows(out)] == ["Image01.JPG", "Image02.JPG", "Image03.JPG"]


def test_existing_outputs_are_listed_and_nothing_is_written_without_overwrite(capsys, tmp_path, model64, tiny_photos):
    out = tmp_path / "out"
    photos = [tiny_photos / "Image01.JPG", tiny_photos / "Image02.JPG"]
    assert run(capsys, model64, *photos, "--out", out)[0] == 0
    (out / "Image02_mask.png").write_bytes(b"an older mask")
    before = {path.name: path.read_bytes() for path in out.iterdir()}

    status, _, stderr = run(capsys, model64, *photos, "--out", out, "--overlay")
    assert status == 1
    assert "13 output(s) exist already" in stderr and "nothing was written" in stderr  # 5 per photo and 3 of the run
    # The first ten are named (the photos' five each), the run's three counted.
    assert str(out / "Image02_mask.png") in stderr and str(out / "Image02_stones.geojson") in stderr
    assert "and 3 more" in stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # no overlay, nothing replaced

    assert run(capsys, model64, *photos, "--out", out, "--overlay", "--overwrite")[0] == 0
    assert read_mask(out / "Image02_mask.png").shape == (96, 128)
    assert sorted(path.name for path in out.glob("*_overlay.jpg")) == ["Image01_overlay.jpg", "Image02_overlay.jpg"]


def test_overlay_outlines_each_stone_in_its_own_colour(capsys, tmp_path, model_full):
    """Two grey discs on a dark photo: the overlay keeps the photo's pixels except for a saturated
    outline along each disc's edge, in a different colour for each."""
    photo = np.full((300, 400, 3), 40, np.uint8)
    cv2.circle(photo, (110, 150), 70, (200, 200, 200), -1)
    cv2.circle(photo, (290, 150), 70, (200, 200, 200), -1)
    write_jpeg(tmp_path / "two.jpg", photo)
    out = tmp_path / "out"
    assert run(capsys, model_full, tmp_path / "two.jpg", "--out", out, "--overlay")[0] == 0
    overlay = cv2.cvtColor(cv2.imread(str(out / "two_overlay.jpg")), cv2.COLOR_BGR2RGB).astype(int)
    assert overlay.shape == (300, 400, 3)
    assert np.abs(overlay[:30, :30] - 40).max() < 8 and np.abs(overlay[130:170, 90:130] - 200).max() < 12  # untouched
    saturated = np.ptp(overlay, axis=2) > 80  # grey photo pixels have none: these are outline pixels
    y, x = np.mgrid[:300, :400]
    colours = []
    for centre in (110, 290):
        ring = np.abs(np.hypot(x - centre, y - 150) - 68) <= 3  # just inside the disc's edge
        assert saturated[ring].sum() > 0.8 * 2 * np.pi * 68  # all the way round, at least one pixel wide
        assert saturated[~ring & (np.abs(x - centre) < 100)].mean() < 0.01
        colours.append(overlay[ring & saturated].mean(axis=0))
    assert np.abs(colours[0] - colours[1]).max() > 60  # two colours


def test_folder_scan_takes_photos_only_once_and_refuses_clashing_names(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    for name in ("A.JPG", "A_label.jpg", "B.png", "B_mask.png", "B_overlay.jpg", "C.jpeg", "notes.txt"):
        (folder / name).write_bytes(b"x")
    assert [p.name for p in predict.find_photos([folder, folder / "A.JPG"])] == ["A.JPG", "B.png", "C.jpeg"]
    other = tmp_path / "other"
    other.mkdir()
    (other / "A.png").write_bytes(b"x")
    with pytest.raises(inference.InputError, match="same name"):
        predict.find_photos([folder, other / "A.png"])
    with pytest.raises(inference.InputError, match="no such file or folder"):
        predict.find_photos([tmp_path / "missing"])


def test_when_no_photo_succeeds_nothing_is_written_and_the_fixed_photo_goes_through(capsys, tmp_path, model64,
                                                                                   tiny_photos):
    """A failed run must not leave a header-only predictions.csv that makes the retry refuse to overwrite."""
    photo = tmp_path / "Image01.JPG"
    photo.write_bytes(b"")
    out, existing = tmp_path / "out", tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("keep")
    for folder in (out, existing):
        status, _, stderr = run(capsys, model64, photo, "--out", folder)
        assert status == 1 and stderr.count(str(photo)) == 1
        assert "none of the 1 photo(s) could be predicted" in stderr and "nothing was written" in stderr
    assert not out.exists() and [path.name for path in existing.iterdir()] == ["notes.txt"]

    shutil.copy(tiny_photos / "Image01.JPG", photo)
    status, stdout, _ = run(capsys, model64, photo, "--out", out)
    assert status == 0 and [row["file"] for row in read_rows(out)] == [str(photo)]
    assert "predict: 1/1 photos" in stdout and "\x1b" not in stdout  # plain progress when not a terminal


# ----------------------------------------------------------------------------- stones
@pytest.fixture(scope="module")
def model_full(tmp_path_factory):
    """The brightness model at scale 1: a small photo runs whole at its own size, so the mask is exactly
    the bright pixels (grey above 128) and the stones are the shapes drawn."""
    path = tmp_path_factory.mktemp("models") / "brightness-full.keras"
    brightness_model(None, scale=1.0).save(path)
    return path


def read_table(path):
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_touching_discs_become_two_measured_stones_and_an_edge_stone_is_flagged(capsys, tmp_path, model_full):
    """Two discs of radius 40 whose centres are 76 px apart (they overlap in a narrow neck) and a disc of
    radius 30 cut by the right edge, on a 240 x 320 photo at 0.5 mm per pixel."""
    photo = np.full((240, 320, 3), 20, np.uint8)
    for x, y, radius in ((80, 100, 40), (156, 100, 40), (300, 180, 30)):
        cv2.circle(photo, (x, y), radius, (235, 235, 235), -1)
    cv2.imwrite(str(tmp_path / "discs.png"), photo)
    out = tmp_path / "out"
    assert run(capsys, model_full, tmp_path / "discs.png", "--out", out, "--mm-per-pixel", "0.5")[0] == 0

    rows = sorted(read_table(out / "discs_stones.csv"), key=lambda row: float(row["centroid_x"]))
    assert list(rows[0]) == ["id", "centroid_x", "centroid_y", "area_px", "diameter_px", "major_axis_px",
                             "minor_axis_px", "touches_edge", "area_mm2", "diameter_mm", "major_axis_mm",
                             "minor_axis_mm"]
    assert len(rows) == 3
    left, right, edge = rows
    for stone, x in ((left, 78), (right, 158)):  # each piece is a disc less half the lens: centroid a bit outward
        assert float(stone["centroid_x"]) == pytest.approx(x, abs=2.5)
        assert float(stone["centroid_y"]) == pytest.approx(100, abs=1)
        assert float(stone["diameter_px"]) == pytest.approx(80, rel=0.04)  # equivalent circle of ~pi 40^2
        assert float(stone["major_axis_px"]) == pytest.approx(80, rel=0.06)
        assert float(stone["diameter_mm"]) == pytest.approx(float(stone["diameter_px"]) * 0.5, rel=1e-4)
        assert float(stone["area_mm2"]) == pytest.approx(int(stone["area_px"]) * 0.25, rel=1e-4)
        assert stone["touches_edge"] == "0"
    assert edge["touches_edge"] == "1" and float(edge["centroid_x"]) > 290

    labels = stones.decode_instances_png((out / "discs_instances.png").read_bytes())
    assert labels.dtype == np.uint16 and labels.shape == (240, 320) and len(np.unique(labels)) == 4
    assert labels[100, 80] != labels[100, 156] and labels[100, 80] and labels[100, 156] and not labels[10, 10]

    row, = read_rows(out)
    assert list(row) == ["file", "width", "height", "stone_fraction", "stone_count", "edge_stones", "size_unit",
                         "d10_mm", "d10_mm_low", "d10_mm_high", "d50_mm", "d50_mm_low", "d50_mm_high",
                         "d80_mm", "d80_mm_low", "d80_mm_high"]
    assert (row["stone_count"], row["edge_stones"], row["size_unit"]) == ("3", "1", "mm")
    # The distribution holds the two discs only (the edge stone is left out): D values near 40 mm, and
    # each interval between the two discs' sizes, around its D value.
    for percent in (10, 50, 80):
        low, size, high = (float(row[f"d{percent}_mm{end}"]) for end in ("_low", "", "_high"))
        assert size == pytest.approx(40, rel=0.04)
        assert 0.96 * 40 < low <= size <= high < 1.04 * 40
    pooled = read_table(out / "predictions_sizes.csv")
    assert list(pooled[0]) == ["percent_passing", "diameter_px", "diameter_px_low", "diameter_px_high",
                               "diameter_mm", "diameter_mm_low", "diameter_mm_high"]
    assert [r["percent_passing"] for r in pooled] == [str(p) for p in range(10, 100, 10)]
    for end in ("", "_low", "_high"):  # one photo: the pooled stones are the photo's, resampled alike
        assert float(pooled[4][f"diameter_mm{end}"]) == pytest.approx(float(row[f"d50_mm{end}"]), rel=1e-3)
        assert float(pooled[4][f"diameter_px{end}"]) == pytest.approx(2 * float(row[f"d50_mm{end}"]), rel=1e-3)
    for curve in ("discs_sizes.png", "predictions_sizes.png"):
        assert cv2.imread(str(out / curve)) is not None

    # --include-edge puts the truncated stone into the distribution: D10 falls to its size.
    assert run(capsys, model_full, tmp_path / "discs.png", "--out", tmp_path / "all", "--include-edge")[0] == 0
    row, = read_rows(tmp_path / "all")
    assert row["size_unit"] == "px" and float(row["d10_px"]) < 0.9 * 80 and "d10_mm" not in row


def test_a_photo_without_stones_gets_an_empty_table_and_no_curve(capsys, tmp_path, model_full):
    photo = np.full((120, 160, 3), 20, np.uint8)
    cv2.imwrite(str(tmp_path / "belt.png"), photo)
    out = tmp_path / "out"
    status, stdout, stderr = run(capsys, model_full, tmp_path / "belt.png", "--out", out)
    assert status == 0 and "error" not in stderr
    assert (out / "belt_stones.csv").read_text().splitlines() == [
        "id,centroid_x,centroid_y,area_px,diameter_px,major_axis_px,minor_axis_px,touches_edge"]
    assert not (out / "belt_sizes.png").exists() and not (out / "predictions_sizes.png").exists()
    assert (out / "predictions_sizes.csv").read_text() == "percent_passing,diameter_px,diameter_px_low,diameter_px_high\n"
    row, = read_rows(out)
    assert row["stone_count"] == "0"
    assert [row[f"d{percent}_px{end}"] for percent in (10, 50, 80) for end in ("", "_low", "_high")] == [""] * 9
    assert json.loads((out / "belt_stones.geojson").read_text())["features"] == []
    assert not stones.decode_instances_png((out / "belt_instances.png").read_bytes()).any()
    assert "none in the size distribution" in stdout


def test_one_huge_region_is_split_and_a_mask_of_stone_only_is_one_error_line(capsys, tmp_path, model_full):
    """A bright photo with a thin dark frame is one region covering almost everything: split like any
    other, quickly. A photo bright everywhere leaves no background to measure from: one error line names
    it, and the other photo is still predicted."""
    huge = np.full((400, 600, 3), 235, np.uint8)
    cv2.rectangle(huge, (0, 0), (599, 399), (20, 20, 20), 2)
    cv2.imwrite(str(tmp_path / "huge.png"), huge)
    cv2.imwrite(str(tmp_path / "white.png"), np.full((100, 100, 3), 235, np.uint8))
    out = tmp_path / "out"
    status, _, stderr = run(capsys, model_full, tmp_path / "huge.png", tmp_path / "white.png", "--out", out)
    assert status == 1
    errors = [line for line in stderr.splitlines() if "error" in line]
    assert errors[0].startswith(f"predict: error: {tmp_path / 'white.png'}: cannot split the predicted mask")
    assert "stone everywhere" in errors[0] and "Traceback" not in stderr
    row, = read_rows(out)
    assert row["file"] == str(tmp_path / "huge.png") and int(row["stone_count"]) >= 1
    assert not list(out.glob("white_*"))


@pytest.mark.parametrize("value", ["0", "-0.2"])
def test_mm_per_pixel_must_be_positive(capsys, tmp_path, value):
    with pytest.raises(SystemExit) as stopped:
        predict.main(["m.keras", "x.jpg", "--out", str(tmp_path / "out"), "--mm-per-pixel", value])
    stderr = capsys.readouterr().err
    assert stopped.value.code != 0 and "Traceback" not in stderr
    assert [line for line in stderr.splitlines() if "error" in line] == [
        f"python -m stoneseg.predict: error: --mm-per-pixel must be greater than 0, got {float(value):g}"]


# ----------------------------------------------------------------------------- instance outputs (issue 18)
def discs_photo(height=200, width=240):
    """Bright discs (220) on a dark ground (30), each at least 40 px from the photo's edge: two touching
    pairs of radius 24 (centres 46 apart), two single discs of radius 20 and 28, and a tiny disc of
    radius 2. Returns the photo and the number of stones drawn."""
    photo = np.full((height, width, 3), 30, np.uint8)
    for x, y, radius in ((64, 64, 24), (110, 64, 24), (80, 140, 24), (126, 140, 24), (190, 70, 20),
                         (185, 145, 28), (160, 105, 2)):
        cv2.circle(photo, (x, y), radius, (220, 220, 220), -1)
    return photo, 7


def test_a_distance_model_splits_along_its_map_and_a_mosaic_of_four_gives_four_times_the_stones(capsys, tmp_path):
    """Issue 18's invariance: the same stones in one photo and in a 2 x 2 mosaic of it, both in 128 px tiles,
    give 4 x the count and the same D50 (within 2 %), the tiny disc included: the network split's settings
    are in pixels, not shares of the photo."""
    model = tmp_path / "distance.keras"
    distance_model(None, scale=1.0).save(model)
    photo, drawn = discs_photo()
    cv2.imwrite(str(tmp_path / "one.png"), photo)
    cv2.imwrite(str(tmp_path / "four.png"), np.concatenate([np.concatenate([photo, photo], 1)] * 2, 0))
    rows = {}
    for name in ("one", "four"):
        out = tmp_path / f"out-{name}"
        assert run(capsys, model, tmp_path / f"{name}.png", "--out", out, "--tile", "128", "--tile-overlap", "32", "--weighting", "count",
                   "--include-edge")[0] == 0
        rows[name], = read_rows(out)
    assert int(rows["one"]["stone_count"]) == drawn  # both touching pairs split, the tiny disc kept whole
    assert int(rows["four"]["stone_count"]) == 4 * drawn
    assert float(rows["four"]["d50_px"]) == pytest.approx(float(rows["one"]["d50_px"]), rel=0.02)

    labels = stones.decode_instances_png((tmp_path / "out-one" / "one_instances.png").read_bytes())
    pairs = ((64, 64), (110, 64)), ((80, 140), (126, 140))
    for (x1, y1), (x2, y2) in pairs:
        assert labels[y1, x1] and labels[y2, x2] and labels[y1, x1] != labels[y2, x2]
    # The geometric split's minimum (a share of the photo) would not have kept the tiny disc of ~13 px
    # in the mosaic; the network split does, as a stone of its own.
    assert labels[105, 160] and (labels == labels[105, 160]).sum() < 30


def test_an_old_binary_keras_file_predicts_as_before(capsys, tmp_path, model_full):
    """A model with one output (as every model saved before instance outputs) keeps the geometric split:
    its instances are exactly stones.split_stones of its mask with --min-distance's default."""
    assert inference.Inference(keras.saving.load_model(model_full)).output == "binary"
    photo, _ = discs_photo()
    cv2.imwrite(str(tmp_path / "discs.png"), photo)
    out = tmp_path / "out"
    assert run(capsys, model_full, tmp_path / "discs.png", "--out", out)[0] == 0
    mask = read_mask(out / "discs_mask.png")
    expected = stones.split_stones(mask, stones.MIN_DISTANCE_FRACTION * min(mask.shape))
    labels = stones.decode_instances_png((out / "discs_instances.png").read_bytes())
    np.testing.assert_array_equal(labels, expected)
    assert int(read_rows(out)[0]["stone_count"]) == expected.max()

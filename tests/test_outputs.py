"""stoneseg.outputs' grain-size statistics and polygons, without a model: a mask of known discs written as
predict writes a photo (D values at --percentiles with bootstrap intervals, unit-named columns, the pooled
distribution's intervals, NAME_stones.geojson), and predict's options for them."""

import csv
import json

import cv2
import numpy as np
import pytest

from stoneseg import geojson, outputs, predict, stones

MM_PER_PIXEL = 0.5


def discs_mask(count: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 0/255 mask of `count` separate discs of random radii (6 to 20 px) on a grid, none at the edge; and
    their radii."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(count)))
    mask = np.zeros((side * 50, side * 50), np.uint8)
    radii = rng.integers(6, 21, count)
    for index, radius in enumerate(radii):
        row, column = divmod(index, side)
        cv2.circle(mask, (column * 50 + 25, row * 50 + 25), int(radius), 255, -1)
    return mask, radii


def settings_for(tmp_path, *options) -> outputs.OutputSettings:
    return outputs.OutputSettings.from_args(predict.parse_args(["m.keras", "discs.png", "--out", str(tmp_path),
                                                                *options]))


def read_table(path):
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_a_photos_row_has_the_asked_d_values_with_intervals_in_mm(tmp_path):
    mask, _ = discs_mask()
    settings = settings_for(tmp_path, "--percentiles", "96,16,84,50", "--mm-per-pixel", str(MM_PER_PIXEL))
    assert settings.percents == (16, 50, 84, 96) and settings.ci == 0.95 and settings.bootstrap == 1000
    row, table = outputs.write_outputs(tmp_path / "discs.png", mask, settings)
    names = [f"d{percent}_mm{end}" for percent in (16, 50, 84, 96) for end in ("", "_low", "_high")]
    assert list(row.columns()) == list(outputs.PREDICTION_COLUMNS) + names
    assert row.size_unit == "mm" and row.stone_count == 48
    # The D values are the distribution's, and each interval holds its D value.
    distribution = stones.size_distribution(table)
    for percent in (16, 50, 84, 96):
        assert row[f"d{percent}_mm"] == pytest.approx(distribution.size_passing(percent), abs=1e-4)
        assert row[f"d{percent}_mm_low"] <= row[f"d{percent}_mm"] <= row[f"d{percent}_mm_high"]
    assert row["d16_mm_high"] < row["d84_mm_low"]  # 48 stones of 12 to 40 px: D16 and D84 well apart

    outputs.write_predictions_csv(tmp_path / "predictions.csv", [row])
    written, = read_table(tmp_path / "predictions.csv")
    assert list(written) == list(row.columns())
    assert all(float(written[name]) == pytest.approx(row[name], abs=1e-4) for name in names)


def test_a_seeded_run_is_reproducible_and_the_seed_and_the_photo_change_the_intervals(tmp_path):
    mask, _ = discs_mask()
    runs = {}
    for name, options, photo in (("a", (), "discs.png"), ("b", (), "discs.png"), ("seed", ("--seed", "7"), "discs.png"),
                                 ("photo", (), "other.png")):
        out = tmp_path / name
        out.mkdir()
        runs[name] = outputs.write_outputs(out / photo, mask, settings_for(out, *options))[0]
    assert runs["a"].d_values == runs["b"].d_values
    assert runs["seed"].d_values != runs["a"].d_values
    assert runs["photo"].d_values != runs["a"].d_values  # each photo its own resamples
    # The D values themselves do not depend on the seed, only their intervals.
    assert runs["seed"]["d50_px"] == runs["a"]["d50_px"]


def test_no_bootstrap_no_interval_columns(tmp_path):
    mask, _ = discs_mask()
    settings = settings_for(tmp_path, "--bootstrap", "0", "--percentiles", "50")
    row, _ = outputs.write_outputs(tmp_path / "discs.png", mask, settings)
    assert [name for name, _ in row.d_values] == ["d50_px"]
    pooled = outputs.write_run(tmp_path, [row], [outputs.find_stones("discs.png", mask, settings)[1]], settings)
    assert list(read_table(tmp_path / "predictions_sizes.csv")[0]) == ["percent_passing", "diameter_px"]
    assert "bootstrap" not in outputs.run_summary([row], pooled, settings)


def test_the_pooled_distribution_has_intervals_at_every_percent_and_the_asked_ones(tmp_path):
    tables, rows = [], []
    settings = settings_for(tmp_path, "--percentiles", "16,50,84,96", "--mm-per-pixel", str(MM_PER_PIXEL),
                            "--ci", "0.9")
    for seed in range(3):
        mask, _ = discs_mask(seed=seed)
        row, table = outputs.write_outputs(tmp_path / f"photo{seed}.png", mask, settings)
        rows.append(row)
        tables.append(table)
    pooled = outputs.write_run(tmp_path, rows, tables, settings)
    written = read_table(tmp_path / "predictions_sizes.csv")
    assert [row["percent_passing"] for row in written] == ["10", "16", "20", "30", "40", "50", "60", "70", "80",
                                                          "84", "90", "96"]
    distribution = stones.size_distribution(tables)
    for row in written:
        percent = float(row["percent_passing"])
        assert float(row["diameter_mm"]) == pytest.approx(distribution.size_passing(percent), rel=1e-5)
        assert float(row["diameter_px"]) == pytest.approx(float(row["diameter_mm"]) / MM_PER_PIXEL, rel=1e-5)
        assert float(row["diameter_mm_low"]) <= float(row["diameter_mm"]) <= float(row["diameter_mm_high"])
        # One factor between px and mm, and the same resamples: the px interval is the mm one, scaled.
        for end in ("_low", "_high"):
            assert float(row[f"diameter_px{end}"]) == pytest.approx(float(row[f"diameter_mm{end}"]) / MM_PER_PIXEL,
                                                                  rel=1e-5)
    # 144 pooled stones: narrower than one photo's 48.
    pooled_width = float(written[5]["diameter_mm_high"]) - float(written[5]["diameter_mm_low"])
    assert pooled_width < min(row["d50_mm_high"] - row["d50_mm_low"] for row in rows)
    summary = outputs.run_summary(rows, pooled, settings)
    assert "D16 " in summary and "D96 " in summary and "90% bootstrap intervals from 1000 resamples" in summary
    assert cv2.imread(str(tmp_path / "predictions_sizes.png")) is not None


def test_the_photos_polygons_are_its_stones_with_their_rows(tmp_path):
    mask, _ = discs_mask()
    settings = settings_for(tmp_path, "--mm-per-pixel", str(MM_PER_PIXEL))
    outputs.write_outputs(tmp_path / "discs.png", mask, settings)
    collection = json.loads((tmp_path / "discs_stones.geojson").read_text())
    table = read_table(tmp_path / "discs_stones.csv")
    labels = stones.decode_instances_png((tmp_path / "discs_instances.png").read_bytes())
    assert collection["type"] == "FeatureCollection" and "crs" not in collection  # pixel coordinates
    assert len(collection["features"]) == len(table) == 48
    for feature, row in zip(collection["features"], table):
        assert feature["id"] == int(row["id"])
        assert {name: str(value) for name, value in feature["properties"].items()} == {
            name: str(int(value)) if name in stones.WHOLE_COLUMNS else str(float(value)) for name, value in row.items()}
        ring = np.array(feature["geometry"]["coordinates"][0][:-1], np.float64)
        assert geojson.signed_area(ring) == int(row["area_px"]) == np.count_nonzero(labels == feature["id"])  # CCW
        # x = column, y = -row: the polygon lies on the stone.
        x, y = ring.mean(axis=0)
        assert labels[int(-y), int(x)] == feature["id"]


def test_polygons_open_in_gdal(tmp_path):
    """GDAL's GeoJSON driver (what QGIS opens the file with) reads the features, their properties and valid
    polygons of the table's areas (skipped unless pyogrio and shapely are installed; neither is a dependency)."""
    raw = pytest.importorskip("pyogrio.raw")
    shapely = pytest.importorskip("shapely")
    mask, _ = discs_mask()
    outputs.write_outputs(tmp_path / "discs.png", mask, settings_for(tmp_path, "--mm-per-pixel", str(MM_PER_PIXEL)))
    meta, _, geometry, values = raw.read(tmp_path / "discs_stones.geojson")
    table = read_table(tmp_path / "discs_stones.csv")
    assert list(meta["fields"]) == list(table[0])
    polygons = shapely.from_wkb(geometry)
    assert len(polygons) == len(table) == 48 and all(shapely.is_valid(polygons))
    assert list(shapely.area(polygons)) == [float(row["area_px"]) for row in table]
    area_mm2 = values[list(meta["fields"]).index("area_mm2")]
    assert list(area_mm2) == pytest.approx([float(row["area_mm2"]) for row in table])


@pytest.mark.parametrize("options, message", [
    (("--percentiles", "16,50,100"), "argument --percentiles: 100 is not strictly between 0 and 100"),
    (("--percentiles", "16,x"), "argument --percentiles: 'x' is not a number (expected e.g. 16,50,84,96)"),
    (("--ci", "1"), "--ci must be strictly between 0 and 1, got 1"),
    (("--bootstrap", "-1"), "--bootstrap and --seed must be at least 0, got -1 and 0"),
])
def test_bad_statistics_options_are_one_error_line(capsys, options, message):
    with pytest.raises(SystemExit):
        predict.parse_args(["m.keras", "discs.png", "--out", "out", *options])
    assert capsys.readouterr().err.splitlines()[-1] == f"python -m stoneseg.predict: error: {message}"


def test_settings_from_a_namespace_without_the_statistics_options_take_the_defaults(tmp_path):
    import argparse
    args = argparse.Namespace(out=tmp_path, threshold=0.5, overlay=False, mm_per_pixel=None, min_distance=0.01,
                              weighting="area", include_edge=False)
    settings = outputs.OutputSettings.from_args(args, bootstrap=200)
    assert (settings.percents, settings.ci, settings.bootstrap, settings.seed) == (stones.DEFAULT_PERCENTS, 0.95,
                                                                                   200, 0)
